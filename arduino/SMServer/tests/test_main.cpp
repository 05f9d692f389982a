/*
 * test_main.cpp - runs every registered TEST and prints the summary line
 * ("N passed, M failed") that make, pytest and CI read.
 */
#include "test_framework.h"

namespace testing {

TestCase*& registry() {
  static TestCase* head = nullptr;
  return head;
}

int& currentFailures() {
  static int failures = 0;
  return failures;
}

void fail(const char* file, int line, const std::string& message) {
  ++currentFailures();
  std::cout << "    " << file << ":" << line << ": CHECK failed: " << message << "\n";
}

Registrar::Registrar(const char* name, TestFn fn) {
  node.name = name;
  node.fn = fn;
  node.next = nullptr;
  // Append, so cases run in file order.
  TestCase** slot = &registry();
  while (*slot) slot = &(*slot)->next;
  *slot = &node;
}

}  // namespace testing

int main(int argc, char** argv) {
  const char* filter = argc > 1 ? argv[1] : nullptr;  // optional substring
  int passed = 0;
  int failed = 0;
  for (testing::TestCase* test = testing::registry(); test; test = test->next) {
    if (filter && !std::strstr(test->name, filter)) continue;
    testing::currentFailures() = 0;
    test->fn();
    if (testing::currentFailures() == 0) {
      ++passed;
      std::cout << "ok   " << test->name << std::endl;
    } else {
      ++failed;
      std::cout << "FAIL " << test->name << "\n";
    }
  }
  std::cout << passed << " passed, " << failed << " failed" << std::endl;
  return failed == 0 ? 0 : 1;
}
