// The currency between formats/ and io/: a byte range of one model file. A segment (a layer's
// dense part, one expert) is a list of extents read as one unit.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace sluice {

struct Extent {
    uint32_t file_index = 0;  // index into the model's file list
    uint64_t offset = 0;      // bytes from the start of the file
    uint64_t length = 0;      // bytes
};

// The files a model consists of, in the order extents index them.
struct FileSet {
    std::vector<std::string> paths;
};

}  // namespace sluice
