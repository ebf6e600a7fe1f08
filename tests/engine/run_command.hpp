// For the tests that run the sluice binary: a shell command's exit status and its output.
#pragma once

#include <cstdio>
#include <string>

namespace sluice::test {

struct CommandResult {
    int status = -1;   // as pclose returns it: 0 for success
    std::string out;   // stdout (and stderr when the command redirects it)
};

inline CommandResult run_command(const std::string& command) {
    CommandResult r;
    FILE* pipe = ::popen(command.c_str(), "r");
    if (!pipe) return r;
    char buffer[4096];
    size_t n;
    while ((n = std::fread(buffer, 1, sizeof buffer, pipe)) > 0) r.out.append(buffer, n);
    r.status = ::pclose(pipe);
    return r;
}

}  // namespace sluice::test
