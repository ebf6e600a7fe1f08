// Typed errors raised at the edges (file formats, io, planner, CLI input) and carried to the
// CLI, which prints one line and exits non-zero. Messages name the file / tensor / line.
#pragma once

#include <stdexcept>
#include <string>
#include <fmt/format.h>

namespace sluice {

enum class ErrorKind {
    invalid_input,   // malformed or inconsistent file / request / argument
    unsupported,     // valid, but a feature or value sluice does not implement
    io,              // the operating system refused a read, open, stat ...
    out_of_memory,   // a budget or allocation cannot be met
    internal,        // a broken invariant: a bug in sluice
};

const char* error_kind_name(ErrorKind kind);

class Error : public std::runtime_error {
public:
    Error(ErrorKind kind, const std::string& message) : std::runtime_error(message), kind_(kind) {}
    ErrorKind kind() const { return kind_; }

private:
    ErrorKind kind_;
};

template <typename... Args>
[[noreturn]] void fail(ErrorKind kind, fmt::format_string<Args...> format, Args&&... args) {
    throw Error(kind, fmt::format(format, std::forward<Args>(args)...));
}

}  // namespace sluice
