#include "core/error.hpp"

namespace sluice {

const char* error_kind_name(ErrorKind kind) {
    switch (kind) {
        case ErrorKind::invalid_input: return "invalid input";
        case ErrorKind::unsupported: return "unsupported";
        case ErrorKind::io: return "I/O error";
        case ErrorKind::out_of_memory: return "out of memory";
        case ErrorKind::internal: return "internal error";
    }
    return "error";
}

}  // namespace sluice
