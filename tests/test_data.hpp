#pragma once
// Where the committed fixtures are: meson passes tests/data as SLUICE_TEST_DATA to every test.
#include <cstdlib>
#include <string>

#include <doctest/doctest.h>

namespace sluice::test {

// The fixture `name` below the test data folder; the test fails at once when it was not given.
inline std::string fixture(const std::string& name) {
    const char* d = std::getenv("SLUICE_TEST_DATA");
    REQUIRE_MESSAGE(d, "SLUICE_TEST_DATA is not set");
    return std::string(d) + "/" + name;
}

}  // namespace sluice::test
