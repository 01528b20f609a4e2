// Picks the fused op's strategy per (world size, hidden, quant, token count) from a table
// measured on the machine (`tpfuse tune`), with built-in defaults.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "tpfuse/fused_op.h"
#include "tpfuse/status.h"

namespace tpfuse::runtime {

// One row: for this world size / hidden / quant, tokens in [min_tokens, max_tokens] use
// `strategy`. hidden == 0 or quant "any" match everything (looked up most specific first).
struct StrategyRule {
  int world_size = 2;
  int64_t hidden = 0;
  std::string quant = "any";
  int64_t min_tokens = 1;
  int64_t max_tokens = INT64_MAX;
  Strategy strategy = Strategy::kOneShot;
};

class StrategyTable {
 public:
  // Built-in defaults (measured at TP 2 on H200; other world sizes extrapolated).
  static StrategyTable Defaults();
  static StatusOr<StrategyTable> FromJson(const std::string& json_text);
  static StatusOr<StrategyTable> Load(const std::string& path);
  std::string ToJson() const;

  Strategy Choose(int world_size, int64_t hidden, QuantMode quant, int64_t tokens) const;
  const std::vector<StrategyRule>& rules() const { return rules_; }
  void AddRule(const StrategyRule& rule) { rules_.push_back(rule); }
  std::string source;  // "built-in" or the file it came from

 private:
  std::vector<StrategyRule> rules_;
};

}  // namespace tpfuse::runtime
