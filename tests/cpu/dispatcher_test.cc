// The strategy table: built-in defaults, most-specific-rule lookup, JSON round trip and errors.
#include "runtime/dispatcher.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <limits>
#include <string>

namespace tpfuse::runtime {
namespace {

constexpr int64_t kMax = std::numeric_limits<int64_t>::max();

TEST(StrategyTest, NamesRoundTrip) {
  for (Strategy s : kAllStrategies) {
    StatusOr<Strategy> parsed = ParseStrategy(StrategyName(s));
    ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
    EXPECT_EQ(*parsed, s);
  }
  StatusOr<Strategy> bad = ParseStrategy("threeshot");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("threeshot"), std::string::npos);
  // "auto" is a request, not a strategy.
  EXPECT_FALSE(ParseStrategy("auto").ok());
}

TEST(StrategyTest, RequestIsAutoOrAStrategy) {
  StatusOr<StrategyRequest> automatic = ParseStrategyRequest("auto");
  ASSERT_TRUE(automatic.ok()) << automatic.status().ToString();
  EXPECT_FALSE(automatic->has_value());
  EXPECT_EQ(StrategyRequestName(*automatic), "auto");
  for (Strategy s : kAllStrategies) {
    StatusOr<StrategyRequest> parsed = ParseStrategyRequest(StrategyName(s));
    ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
    EXPECT_EQ(*parsed, s);
    EXPECT_EQ(StrategyRequestName(*parsed), StrategyName(s));
  }
  StatusOr<StrategyRequest> bad = ParseStrategyRequest("Auto");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("'Auto'"), std::string::npos);
}

TEST(StrategyTableTest, DefaultsAtTp2FollowTheMeasuredCrossovers) {
  const StrategyTable t = StrategyTable::Defaults();
  EXPECT_EQ(t.source, "built-in");
  for (QuantMode q : {QuantMode::kNone, QuantMode::kFp8Tensor, QuantMode::kFp8Group}) {
    EXPECT_EQ(t.Choose(2, 4096, q, 1), Strategy::kOneShot);
    EXPECT_EQ(t.Choose(2, 4096, q, 511), Strategy::kOneShot);
    EXPECT_EQ(t.Choose(2, 4096, q, 512), Strategy::kTwoShot);
    // Two-shot has no upper bound in the table: the caller demotes shapes over the workspace.
    EXPECT_EQ(t.Choose(2, 4096, q, 1 << 20), Strategy::kTwoShot);
  }
  EXPECT_EQ(t.Choose(2, 7168, QuantMode::kFp8Tensor, 127), Strategy::kOneShot);
  EXPECT_EQ(t.Choose(2, 7168, QuantMode::kFp8Tensor, 128), Strategy::kTwoShot);
  EXPECT_EQ(t.Choose(2, 7168, QuantMode::kFp8Group, 255), Strategy::kOneShot);
  EXPECT_EQ(t.Choose(2, 7168, QuantMode::kFp8Group, 256), Strategy::kTwoShot);
  // An unmeasured hidden size takes the catch-all.
  EXPECT_EQ(t.Choose(2, 5120, QuantMode::kNone, 255), Strategy::kOneShot);
  EXPECT_EQ(t.Choose(2, 5120, QuantMode::kNone, 256), Strategy::kTwoShot);
}

TEST(StrategyTableTest, DefaultsAtOtherWorldSizes) {
  const StrategyTable t = StrategyTable::Defaults();
  EXPECT_EQ(t.Choose(4, 7168, QuantMode::kFp8Group, 255), Strategy::kOneShot);
  EXPECT_EQ(t.Choose(4, 7168, QuantMode::kFp8Group, 256), Strategy::kTwoShot);
  EXPECT_EQ(t.Choose(4, 7168, QuantMode::kFp8Tensor, 128), Strategy::kTwoShot);
  EXPECT_EQ(t.Choose(4, 4096, QuantMode::kNone, 127), Strategy::kOneShot);
  EXPECT_EQ(t.Choose(4, 4096, QuantMode::kNone, 128), Strategy::kTwoShot);
  EXPECT_EQ(t.Choose(8, 4096, QuantMode::kNone, 63), Strategy::kOneShot);
  EXPECT_EQ(t.Choose(8, 4096, QuantMode::kNone, 64), Strategy::kTwoShot);
  // World sizes with no rule: nccl.
  EXPECT_EQ(t.Choose(3, 4096, QuantMode::kNone, 1), Strategy::kNccl);
  EXPECT_EQ(t.Choose(16, 4096, QuantMode::kNone, 1), Strategy::kNccl);
}

TEST(StrategyTableTest, MostSpecificRuleWins) {
  StrategyTable t;
  t.AddRule({2, 0, "any", 1, kMax, Strategy::kNccl});
  t.AddRule({2, 0, "fp8_group", 1, kMax, Strategy::kTwoShot});
  t.AddRule({2, 4096, "any", 1, kMax, Strategy::kOneShot});
  t.AddRule({2, 4096, "fp8_group", 1, 16, Strategy::kNccl});
  // exact hidden and quant
  EXPECT_EQ(t.Choose(2, 4096, QuantMode::kFp8Group, 16), Strategy::kNccl);
  // exact hidden beats exact quant
  EXPECT_EQ(t.Choose(2, 4096, QuantMode::kFp8Group, 17), Strategy::kOneShot);
  // exact quant beats the catch-all
  EXPECT_EQ(t.Choose(2, 7168, QuantMode::kFp8Group, 17), Strategy::kTwoShot);
  // the catch-all
  EXPECT_EQ(t.Choose(2, 7168, QuantMode::kNone, 17), Strategy::kNccl);
}

TEST(StrategyTableTest, FirstRuleWinsATie) {
  StrategyTable t;
  t.AddRule({2, 0, "any", 1, 100, Strategy::kTwoShot});
  t.AddRule({2, 0, "any", 50, 200, Strategy::kOneShot});
  EXPECT_EQ(t.Choose(2, 4096, QuantMode::kNone, 60), Strategy::kTwoShot);
  EXPECT_EQ(t.Choose(2, 4096, QuantMode::kNone, 150), Strategy::kOneShot);
}

TEST(StrategyTableTest, FallsBackToDefaults) {
  StrategyTable t;
  t.AddRule({2, 4096, "fp8_tensor", 1, 1000, Strategy::kNccl});
  EXPECT_EQ(t.Choose(2, 4096, QuantMode::kFp8Tensor, 1), Strategy::kNccl);
  // Outside the table: the defaults.
  EXPECT_EQ(t.Choose(2, 4096, QuantMode::kFp8Tensor, 1001), Strategy::kTwoShot);
  EXPECT_EQ(t.Choose(2, 7168, QuantMode::kFp8Tensor, 1), Strategy::kOneShot);
  EXPECT_EQ(t.Choose(4, 4096, QuantMode::kFp8Tensor, 1), Strategy::kOneShot);
}

TEST(StrategyTableTest, JsonRoundTrip) {
  StrategyTable t;
  t.source = "2x H200 NVLink";
  t.AddRule({2, 4096, "fp8_group", 1, 96, Strategy::kOneShot});
  t.AddRule({2, 4096, "fp8_group", 97, 6000, Strategy::kTwoShot});
  t.AddRule({2, 0, "any", 6001, kMax, Strategy::kNccl});
  const std::string text = t.ToJson();
  StatusOr<StrategyTable> back = StrategyTable::FromJson(text);
  ASSERT_TRUE(back.ok()) << back.status().ToString() << "\n" << text;
  EXPECT_EQ(back->source, "2x H200 NVLink");
  ASSERT_EQ(back->rules().size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    const StrategyRule& a = t.rules()[i];
    const StrategyRule& b = back->rules()[i];
    EXPECT_EQ(a.world_size, b.world_size);
    EXPECT_EQ(a.hidden, b.hidden);
    EXPECT_EQ(a.quant, b.quant);
    EXPECT_EQ(a.min_tokens, b.min_tokens);
    EXPECT_EQ(a.max_tokens, b.max_tokens);
    EXPECT_EQ(a.strategy, b.strategy);
  }
  EXPECT_EQ(back->ToJson(), text);
}

TEST(StrategyTableTest, JsonOptionalFieldsHaveDefaults) {
  StatusOr<StrategyTable> t =
      StrategyTable::FromJson(R"({"rules": [{"world_size": 2, "strategy": "twoshot"}]})");
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  ASSERT_EQ(t->rules().size(), 1u);
  const StrategyRule& r = t->rules()[0];
  EXPECT_EQ(r.hidden, 0);
  EXPECT_EQ(r.quant, "any");
  EXPECT_EQ(r.min_tokens, 1);
  EXPECT_EQ(r.max_tokens, kMax);
  EXPECT_EQ(t->Choose(2, 4096, QuantMode::kNone, 1), Strategy::kTwoShot);
}

// Each malformed table fails with a message naming the offending field.
TEST(StrategyTableTest, JsonErrorsNameTheField) {
  struct Case {
    const char* json;
    const char* expected;
  };
  const Case cases[] = {
      {"not json", "not valid JSON"},
      {"[]", "top level"},
      {"{}", "rules is missing"},
      {R"({"rules": 3})", "rules must be an array"},
      {R"({"machine": 1, "rules": []})", "machine must be a string"},
      {R"({"rules": [1]})", "rules[0] must be an object"},
      {R"({"rules": [{"strategy": "nccl"}]})", "rules[0].world_size is missing"},
      {R"({"rules": [{"world_size": "2", "strategy": "nccl"}]})",
       "rules[0].world_size must be an integer"},
      {R"({"rules": [{"world_size": 2, "strategy": "nccl"}, {"world_size": 2}]})",
       "rules[1].strategy is missing"},
      {R"({"rules": [{"world_size": 2, "strategy": "fast"}]})", "rules[0].strategy"},
      {R"({"rules": [{"world_size": 2, "quant": "fp4", "strategy": "nccl"}]})",
       "rules[0].quant"},
      {R"({"rules": [{"world_size": 2, "hidden": -1, "strategy": "nccl"}]})", "rules[0].hidden"},
      {R"({"rules": [{"world_size": 2, "min_tokens": 0, "strategy": "nccl"}]})",
       "rules[0].min_tokens"},
      {R"({"rules": [{"world_size": 2, "min_tokens": 9, "max_tokens": 8, "strategy": "nccl"}]})",
       "rules[0].max_tokens"},
      {R"({"rules": [{"world_size": 2, "max_tokens": 1.5, "strategy": "nccl"}]})",
       "rules[0].max_tokens must be an integer"},
      {R"({"rules": [{"world_size": 2, "strategy": "nccl", "tokens": 3}]})",
       "rules[0].tokens is not a rule field"},
  };
  for (const Case& c : cases) {
    StatusOr<StrategyTable> t = StrategyTable::FromJson(c.json);
    ASSERT_FALSE(t.ok()) << c.json;
    EXPECT_EQ(t.status().code(), StatusCode::kInvalidArgument) << c.json;
    EXPECT_NE(t.status().message().find(c.expected), std::string::npos)
        << c.json << " -> " << t.status().message();
  }
}

TEST(StrategyTableTest, LoadNamesTheFile) {
  const std::string path = ::testing::TempDir() + "tpfuse_strategy_table_test.json";
  {
    std::ofstream out(path);
    out << R"({"machine": "test box", "rules": [{"world_size": 2, "strategy": "nccl"}]})";
  }
  StatusOr<StrategyTable> t = StrategyTable::Load(path);
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  EXPECT_NE(t->source.find(path), std::string::npos);
  EXPECT_NE(t->source.find("test box"), std::string::npos);
  EXPECT_EQ(t->Choose(2, 4096, QuantMode::kNone, 1), Strategy::kNccl);
  {
    std::ofstream out(path);
    out << R"({"rules": [{"world_size": 2}]})";
  }
  StatusOr<StrategyTable> bad = StrategyTable::Load(path);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find(path), std::string::npos);
  EXPECT_NE(bad.status().message().find("rules[0].strategy"), std::string::npos);
  std::remove(path.c_str());

  StatusOr<StrategyTable> missing = StrategyTable::Load(path + ".absent");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
}

}  // namespace
}  // namespace tpfuse::runtime
