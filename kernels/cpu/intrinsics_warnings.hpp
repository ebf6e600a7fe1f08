// GCC 12 warns inside its own AVX-512 intrinsics' headers when a function compiled for a target
// the file is not built for uses the masked forms (their pass-through operand looks
// uninitialised): such functions sit between these two.
#pragma once

#if defined(__GNUC__) && !defined(__clang__)
#define SLUICE_INTRINSICS_WARNINGS_OFF                                  \
    _Pragma("GCC diagnostic push") _Pragma("GCC diagnostic ignored \"-Wuninitialized\"") \
        _Pragma("GCC diagnostic ignored \"-Wmaybe-uninitialized\"")
#define SLUICE_INTRINSICS_WARNINGS_ON _Pragma("GCC diagnostic pop")
#else
#define SLUICE_INTRINSICS_WARNINGS_OFF
#define SLUICE_INTRINSICS_WARNINGS_ON
#endif
