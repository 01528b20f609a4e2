#include "runtime/dispatcher.h"

#include <cstdint>
#include <fstream>
#include <limits>
#include <optional>
#include <sstream>

#include <nlohmann/json.hpp>

namespace tpfuse::runtime {
namespace {

using nlohmann::json;

constexpr int64_t kUnbounded = std::numeric_limits<int64_t>::max();

// How closely a rule matches a query: an exact hidden size outranks an exact quant mode, which
// outranks a catch-all. -1: the rule does not apply.
int Specificity(const StrategyRule& rule, int world_size, int64_t hidden, QuantMode quant,
                int64_t tokens) {
  if (rule.world_size != world_size) return -1;
  if (tokens < rule.min_tokens || tokens > rule.max_tokens) return -1;
  if (rule.hidden != 0 && rule.hidden != hidden) return -1;
  if (rule.quant != "any" && rule.quant != QuantModeName(quant)) return -1;
  return (rule.hidden != 0 ? 2 : 0) + (rule.quant != "any" ? 1 : 0);
}

// The most specific rule of `rules` for the query; the first one wins a tie (file order).
const StrategyRule* BestRule(const std::vector<StrategyRule>& rules, int world_size,
                             int64_t hidden, QuantMode quant, int64_t tokens) {
  const StrategyRule* best = nullptr;
  int best_score = -1;
  for (const StrategyRule& rule : rules) {
    const int score = Specificity(rule, world_size, hidden, quant, tokens);
    if (score > best_score) {
      best = &rule;
      best_score = score;
    }
  }
  return best;
}

// Reads an integer field of a rule. Absent: `fallback` (nullopt: the field is required).
StatusOr<int64_t> IntField(const json& obj, const std::string& where, const char* field,
                           std::optional<int64_t> fallback) {
  auto it = obj.find(field);
  if (it == obj.end()) {
    if (fallback) return *fallback;
    return InvalidArgument(where, ".", field, " is missing");
  }
  if (!it->is_number_integer())
    return InvalidArgument(where, ".", field, " must be an integer, got ", it->dump());
  return it->get<int64_t>();
}

StatusOr<std::string> TextField(const json& obj, const std::string& where, const char* field,
                                std::optional<std::string> fallback) {
  auto it = obj.find(field);
  if (it == obj.end()) {
    if (fallback) return *fallback;
    return InvalidArgument(where, ".", field, " is missing");
  }
  if (!it->is_string())
    return InvalidArgument(where, ".", field, " must be a string, got ", it->dump());
  return it->get<std::string>();
}

StatusOr<StrategyRule> RuleFromJson(const json& obj, const std::string& where) {
  if (!obj.is_object()) return InvalidArgument(where, " must be an object, got ", obj.dump());
  for (auto it = obj.begin(); it != obj.end(); ++it) {
    static const char* kKnown[] = {"world_size", "hidden",     "quant",
                                   "min_tokens", "max_tokens", "strategy"};
    bool known = false;
    for (const char* k : kKnown) known = known || it.key() == k;
    if (!known)
      return InvalidArgument(where, ".", it.key(),
                             " is not a rule field (expected world_size, hidden, quant, "
                             "min_tokens, max_tokens, strategy)");
  }
  StrategyRule rule;
  TPFUSE_ASSIGN_OR_RETURN(int64_t world_size, IntField(obj, where, "world_size", std::nullopt));
  if (world_size < 1 || world_size > 1024)
    return InvalidArgument(where, ".world_size must be in [1, 1024], got ", world_size);
  rule.world_size = int(world_size);
  TPFUSE_ASSIGN_OR_RETURN(rule.hidden, IntField(obj, where, "hidden", 0));
  if (rule.hidden < 0)
    return InvalidArgument(where, ".hidden must be >= 0 (0 matches any), got ", rule.hidden);
  TPFUSE_ASSIGN_OR_RETURN(rule.quant, TextField(obj, where, "quant", std::string("any")));
  if (rule.quant != "any" && !ParseQuantMode(rule.quant).ok())
    return InvalidArgument(where, ".quant: unknown quant mode '", rule.quant,
                           "' (expected any, none, fp8_tensor, fp8_token or fp8_group)");
  TPFUSE_ASSIGN_OR_RETURN(rule.min_tokens, IntField(obj, where, "min_tokens", 1));
  TPFUSE_ASSIGN_OR_RETURN(rule.max_tokens, IntField(obj, where, "max_tokens", kUnbounded));
  if (rule.min_tokens < 1)
    return InvalidArgument(where, ".min_tokens must be >= 1, got ", rule.min_tokens);
  if (rule.max_tokens < rule.min_tokens)
    return InvalidArgument(where, ".max_tokens (", rule.max_tokens, ") is below min_tokens (",
                           rule.min_tokens, ")");
  TPFUSE_ASSIGN_OR_RETURN(std::string strategy, TextField(obj, where, "strategy", std::nullopt));
  StatusOr<Strategy> kind = ParseStrategy(strategy);
  if (!kind.ok()) return kind.status().WithContext(where + ".strategy");
  rule.strategy = *kind;
  return rule;
}

}  // namespace

StrategyTable StrategyTable::Defaults() {
  // Crossovers measured by `tpfuse tune` on 2x and 4x H200 with NVLink (docs/perf/): one-shot
  // up to the listed T, two-shot above. Two-shot has no upper bound here: a shape over the
  // workspace is demoted to nccl by the caller (runtime::ChooseStrategy). World sizes and
  // hidden sizes that were not measured use the catch-all rows, which follow the measured ones
  // (one-shot while T * H stays near a million elements at TP 2, half that at TP 4) and are
  // guesses at TP 8.
  struct Split {
    int world_size;
    int64_t hidden;       // 0: any
    const char* quant;    // "any" or a mode
    int64_t oneshot_max;  // one-shot for T <= this
  };
  static const Split kSplits[] = {
      // TP 2, measured (2x H200, NVLink NV18).
      {2, 4096, "any", 511},
      {2, 7168, "none", 127},
      {2, 7168, "fp8_tensor", 127},
      {2, 7168, "fp8_token", 255},
      {2, 7168, "fp8_group", 255},
      {2, 8192, "none", 127},
      {2, 8192, "fp8_tensor", 127},
      {2, 8192, "fp8_token", 255},
      {2, 8192, "fp8_group", 255},
      // TP 4, measured (4x H200, NVLink NV18) for fp8_group and fp8_tensor.
      {4, 7168, "fp8_group", 255},
      {4, 7168, "any", 127},
      {4, 8192, "any", 127},
      // Catch-alls.
      {2, 0, "any", 255},
      {4, 0, "any", 127},
      {8, 0, "any", 63},
  };
  StrategyTable table;
  table.source = "built-in";
  for (const Split& s : kSplits) {
    table.AddRule({s.world_size, s.hidden, s.quant, 1, s.oneshot_max, Strategy::kOneShot});
    table.AddRule({s.world_size, s.hidden, s.quant, s.oneshot_max + 1, kUnbounded, Strategy::kTwoShot});
  }
  return table;
}

StatusOr<StrategyTable> StrategyTable::FromJson(const std::string& json_text) {
  json doc = json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded()) return InvalidArgument("strategy table: not valid JSON");
  if (!doc.is_object())
    return InvalidArgument("strategy table: the top level must be an object with \"rules\"");
  StrategyTable table;
  if (auto it = doc.find("machine"); it != doc.end()) {
    if (!it->is_string())
      return InvalidArgument("strategy table: machine must be a string, got ", it->dump());
    table.source = it->get<std::string>();
  }
  auto rules = doc.find("rules");
  if (rules == doc.end()) return InvalidArgument("strategy table: rules is missing");
  if (!rules->is_array())
    return InvalidArgument("strategy table: rules must be an array, got ", rules->dump());
  for (size_t i = 0; i < rules->size(); ++i) {
    StatusOr<StrategyRule> rule = RuleFromJson((*rules)[i], StrCat("rules[", i, "]"));
    if (!rule.ok()) return rule.status().WithContext("strategy table");
    table.AddRule(*rule);
  }
  return table;
}

StatusOr<StrategyTable> StrategyTable::Load(const std::string& path) {
  std::ifstream in(path);
  if (!in) return NotFound("cannot open strategy table '", path, "'");
  std::stringstream text;
  text << in.rdbuf();
  StatusOr<StrategyTable> table = FromJson(text.str());
  if (!table.ok()) return table.status().WithContext(path);
  // `source` names the file; the machine the table was measured on stays visible next to it.
  table->source = table->source.empty() ? path : StrCat(table->source, " (", path, ")");
  return table;
}

std::string StrategyTable::ToJson() const {
  json rules = json::array();
  for (const StrategyRule& r : rules_) {
    json obj = {{"world_size", r.world_size},
                {"hidden", r.hidden},
                {"quant", r.quant},
                {"min_tokens", r.min_tokens},
                {"max_tokens", r.max_tokens},
                {"strategy", std::string(StrategyName(r.strategy))}};
    rules.push_back(std::move(obj));
  }
  json doc = {{"machine", source}, {"rules", std::move(rules)}};
  return doc.dump(2) + "\n";
}

Strategy StrategyTable::Choose(int world_size, int64_t hidden, QuantMode quant,
                                   int64_t tokens) const {
  if (const StrategyRule* rule = BestRule(rules_, world_size, hidden, quant, tokens))
    return rule->strategy;
  // Shapes the table does not cover: the built-in defaults, then nccl, which runs anything.
  static const StrategyTable defaults = Defaults();
  if (this != &defaults) {
    if (const StrategyRule* rule = BestRule(defaults.rules_, world_size, hidden, quant, tokens))
      return rule->strategy;
  }
  return Strategy::kNccl;
}

}  // namespace tpfuse::runtime
