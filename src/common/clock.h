// Seconds since a steady-clock start: the wall times the CLI prints and the check reports.
#pragma once

#include <chrono>

namespace tpfuse {

inline double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace tpfuse
