// cudaemu: cuBLAS's v2 API header (the entry points are in cublas_api.h).
#pragma once

#include "cublas_api.h"
