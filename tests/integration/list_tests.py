"""Prints the unittest ids of an integration test file, one per line, for ctest to run each as
its own test (tests/CMakeLists.txt): ctest can then run them side by side. Importing a test
module runs no test and starts nothing."""

import sys
import unittest


def ids(suite):
    for item in suite:
        if isinstance(item, unittest.TestSuite):
            yield from ids(item)
        else:
            yield item.id()


if __name__ == "__main__":
    for test_id in ids(unittest.defaultTestLoader.loadTestsFromName(sys.argv[1])):
        print(test_id)
