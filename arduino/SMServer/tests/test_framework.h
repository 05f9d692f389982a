/*
 * test_framework.h - a minimal self-registering test runner for the host
 * tests, so they need nothing but g++. TEST(name) defines a case; CHECK and
 * CHECK_EQ record failures without stopping the case; the runner prints
 * "N passed, M failed" as its last line and exits non-zero on any failure.
 */
#ifndef SMSERVER_TEST_FRAMEWORK_H
#define SMSERVER_TEST_FRAMEWORK_H

#include <cstring>
#include <iostream>
#include <sstream>
#include <string>

namespace testing {

typedef void (*TestFn)();

struct TestCase {
  const char* name;
  TestFn fn;
  TestCase* next;
};

TestCase*& registry();
int& currentFailures();
void fail(const char* file, int line, const std::string& message);

// A static Registrar per TEST links its own node into the registry.
struct Registrar {
  Registrar(const char* name, TestFn fn);
  TestCase node;
};

template <typename A, typename B>
void checkEqual(const A& actual, const B& expected, const char* actualText,
                const char* expectedText, const char* file, int line) {
  if (!(actual == expected)) {
    std::ostringstream out;
    out << actualText << " == " << expectedText << "\n      actual:   " << actual
        << "\n      expected: " << expected;
    fail(file, line, out.str());
  }
}

// C strings (and char arrays) compare by content, not by address.
inline std::string normalize(const char* s) { return s ? std::string(s) : std::string("(null)"); }
template <typename T>
const T& normalize(const T& value) {
  return value;
}

}  // namespace testing

#define TEST(name)                                                      \
  static void test_##name();                                            \
  static testing::Registrar registrar_##name(#name, &test_##name);     \
  static void test_##name()

#define CHECK(cond)                                                     \
  do {                                                                  \
    if (!(cond)) testing::fail(__FILE__, __LINE__, #cond);              \
  } while (0)

#define CHECK_EQ(actual, expected) \
  testing::checkEqual(testing::normalize(actual), testing::normalize(expected), #actual, #expected, \
                      __FILE__, __LINE__)

#endif  // SMSERVER_TEST_FRAMEWORK_H
