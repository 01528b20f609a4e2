// Shared by the pass tests (XLA style): IR text in; CHECK lines on the printed result, op
// counts, fusion records and rejection reasons out; and every fusion run unfused and fused on
// the CPU oracle at 2 ranks with Contract 3's tolerance.
#pragma once

#include <gtest/gtest.h>

#include <functional>
#include <memory>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "ir/graph.h"
#include "ir/parser.h"
#include "ir/printer.h"
#include "passes/pass.h"
#include "runtime/check.h"
#include "runtime/executor.h"
#include "runtime/inputs.h"

namespace tpfuse::passes::testing {

// Parses one func; a parse error fails the test and gives null.
inline std::unique_ptr<ir::Graph> ParseOrFail(std::string_view text) {
  StatusOr<std::unique_ptr<ir::Graph>> graph = ir::ParseGraph(text, "test.tpg");
  if (!graph.ok()) {
    ADD_FAILURE() << "parse error: " << graph.status().ToString() << "\n" << text;
    return nullptr;
  }
  return std::move(graph).value();
}

inline std::string Print(const ir::Graph& graph) {
  return ir::PrintGraph(graph, ir::PrintOptions{.result_types = false});
}

// A graph before and after a pipeline, and what the pipeline reported.
struct Compiled {
  std::unique_ptr<ir::Graph> before;
  std::unique_ptr<ir::Graph> after;
  PassContext ctx;
  bool changed = false;
  Status status;

  bool ok() const { return before && after && status.ok(); }
};

// Parses `text` and runs `pipeline` (the default one unless given) on a copy.
inline Compiled Compile(std::string_view text, PassContext ctx = {},
                        const PassManager* pipeline = nullptr) {
  Compiled c;
  c.ctx = std::move(ctx);
  c.before = ParseOrFail(text);
  if (!c.before) return c;
  c.after = c.before->Clone();
  const PassManager default_pipeline = MakeDefaultPipeline();
  StatusOr<bool> changed = (pipeline ? *pipeline : default_pipeline).Run(*c.after, c.ctx);
  c.status = changed.status();
  if (changed.ok()) c.changed = *changed;
  EXPECT_TRUE(c.status.ok()) << c.status.ToString();
  return c;
}

// A FileCheck in miniature, enough for pass tests:
//   CHECK: text       the next line (at or after the previous match) containing `text`
//   CHECK-SAME: text  `text` later on the line of the previous match
//   CHECK-NOT: text   `text` does not occur between the previous match and the next one (or
//                     the end)
// Leading whitespace of each directive line is ignored.
inline void FileCheck(const std::string& output, std::string_view checks) {
  std::vector<std::string> lines;
  {
    std::istringstream in(output);
    for (std::string l; std::getline(in, l);) lines.push_back(l);
  }
  size_t line = 0, col = 0;
  std::vector<std::string> pending_not;
  auto check_nots = [&](size_t end_line, size_t end_col) {
    for (const std::string& n : pending_not) {
      for (size_t l = line; l < lines.size() && l <= end_line; ++l) {
        const size_t from = l == line ? col : 0;
        const size_t to = l == end_line ? end_col : std::string::npos;
        const std::string_view span = std::string_view(lines[l]).substr(
            std::min(from, lines[l].size()),
            to == std::string::npos ? std::string::npos : to - std::min(from, to));
        if (span.find(n) != std::string::npos)
          ADD_FAILURE() << "CHECK-NOT: '" << n << "' found on line " << l + 1 << ": "
                        << lines[l] << "\n--- output:\n" << output;
      }
    }
    pending_not.clear();
  };
  std::istringstream directives{std::string(checks)};
  for (std::string d; std::getline(directives, d);) {
    d.erase(0, d.find_first_not_of(" \t"));
    if (d.empty()) continue;
    auto body = [&](std::string_view prefix) {
      std::string rest = d.substr(prefix.size());
      rest.erase(0, rest.find_first_not_of(' '));
      return rest;
    };
    if (d.rfind("CHECK-NOT:", 0) == 0) {
      pending_not.push_back(body("CHECK-NOT:"));
      continue;
    }
    const bool same = d.rfind("CHECK-SAME:", 0) == 0;
    if (!same && d.rfind("CHECK:", 0) != 0) {
      ADD_FAILURE() << "bad check directive: " << d;
      return;
    }
    const std::string pattern = same ? body("CHECK-SAME:") : body("CHECK:");
    size_t found_line = lines.size(), found_col = 0;
    for (size_t l = line; l < lines.size(); ++l) {
      const size_t from = l == line ? col : 0;
      const size_t at = from <= lines[l].size() ? lines[l].find(pattern, from) : std::string::npos;
      if (at != std::string::npos) {
        found_line = l;
        found_col = at;
        break;
      }
      if (same) break;
    }
    if (found_line == lines.size()) {
      ADD_FAILURE() << (same ? "CHECK-SAME" : "CHECK") << ": '" << pattern << "' not found"
                    << (line < lines.size() ? " after line " + std::to_string(line + 1) : "")
                    << "\n--- output:\n" << output;
      return;
    }
    check_nots(found_line, found_col);
    line = found_line;
    col = found_col + pattern.size();
  }
  check_nots(lines.empty() ? 0 : lines.size() - 1, std::string::npos);
}

inline int CountOp(const ir::Graph& graph, const std::string& op) {
  auto counts = graph.OpCounts();
  auto it = counts.find(op);
  return it == counts.end() ? 0 : it->second;
}

// The nodes of one op, in program order.
inline std::vector<const ir::Node*> NodesOf(const ir::Graph& graph, const std::string& op) {
  std::vector<const ir::Node*> out;
  for (const auto& n : graph.nodes()) {
    if (n->op() == op) out.push_back(n.get());
  }
  return out;
}

// The emit list of an allreduce_rmsnorm node.
inline std::vector<std::string> EmitOf(const ir::Node* fused) {
  const ir::Attr* emit = fused->attr("emit");
  if (emit == nullptr || !emit->AsTextList()) return {};
  return *emit->AsTextList();
}

struct ExpectedFusion {
  std::string anchor;
  QuantMode quant = QuantMode::kNone;
  std::vector<std::string> emit;
};

inline std::string DescribeReport(const PassContext& ctx) {
  std::string s;
  for (const FusionRecord& f : ctx.fusions) {
    s += "fused %" + f.anchor + ": " + f.spec.ToString() + "\n";
    for (const std::string& n : f.notes) s += "  note: " + n + "\n";
  }
  for (const Rejection& r : ctx.rejections) s += "rejected %" + r.anchor + ": " + r.reason + "\n";
  return s;
}

inline void ExpectFusions(const PassContext& ctx, const std::vector<ExpectedFusion>& expected) {
  ASSERT_EQ(ctx.fusions.size(), expected.size()) << DescribeReport(ctx);
  for (size_t i = 0; i < expected.size(); ++i) {
    const FusionRecord& got = ctx.fusions[i];
    EXPECT_EQ(got.anchor, expected[i].anchor) << DescribeReport(ctx);
    EXPECT_EQ(QuantModeName(got.spec.quant), QuantModeName(expected[i].quant))
        << DescribeReport(ctx);
    EXPECT_EQ(got.spec.emit.Names(), expected[i].emit) << DescribeReport(ctx);
  }
}

// The one rejection the pass recorded.
inline std::string OnlyRejection(const PassContext& ctx) {
  EXPECT_EQ(ctx.rejections.size(), 1u) << DescribeReport(ctx);
  return ctx.rejections.empty() ? "" : ctx.rejections[0].reason;
}

inline int Counter(const PassContext& ctx, const std::string& rule, const std::string& name) {
  auto r = ctx.counters.find(rule);
  if (r == ctx.counters.end()) return 0;
  auto c = r->second.find(name);
  return c == r->second.end() ? 0 : c->second;
}

// Token counts of the numeric halves: odd sizes from the shared list's quick subset.
inline const std::vector<int64_t> kPassTestTokens = {1, 3, 19};

// Runs `unfused` and `fused` on the CPU oracle with `world_size` simulated ranks and the same
// random inputs, and expects every output on every rank within Contract 3's tolerance.
inline void ExpectSameOutputs(const ir::Graph& unfused, const ir::Graph& fused,
                              int world_size = 2,
                              const std::vector<int64_t>& token_counts = kPassTestTokens,
                              uint64_t seed = 7) {
  std::unique_ptr<runtime::Executor> cpu = runtime::MakeCpuExecutor(world_size);
  for (int64_t tokens : token_counts) {
    SCOPED_TRACE("T = " + std::to_string(tokens));
    StatusOr<std::vector<runtime::TensorMap>> inputs =
        runtime::MakeRandomInputs(unfused, world_size, tokens, seed + uint64_t(tokens));
    ASSERT_TRUE(inputs.ok()) << inputs.status().ToString();
    StatusOr<runtime::RankOutputs> ref = cpu->Run(unfused, *inputs);
    ASSERT_TRUE(ref.ok()) << "unfused: " << ref.status().ToString();
    StatusOr<runtime::RankOutputs> got = cpu->Run(fused, *inputs);
    ASSERT_TRUE(got.ok()) << "fused: " << got.status().ToString() << "\n" << Print(fused);
    StatusOr<runtime::CheckReport> report =
        runtime::CompareGraphOutputs(unfused, *ref, fused, *got, *inputs);
    ASSERT_TRUE(report.ok()) << report.status().ToString();
    EXPECT_TRUE(report->ok) << report->ToString() << "\n" << Print(fused);
  }
}

// Every output of every rank bitwise equal, unfused against fused.
// `poke`, if given, edits each rank's random inputs before both runs (non-finite values).
inline void ExpectBitwiseOutputs(const ir::Graph& unfused, const ir::Graph& fused,
                                 int world_size, const std::vector<int64_t>& tokens,
                                 const std::vector<uint64_t>& seeds,
                                 const std::function<void(runtime::TensorMap&)>& poke = nullptr) {
  std::unique_ptr<runtime::Executor> cpu = runtime::MakeCpuExecutor(world_size);
  for (uint64_t seed : seeds) {
    for (int64_t t : tokens) {
      SCOPED_TRACE("T = " + std::to_string(t) + ", seed " + std::to_string(seed));
      StatusOr<std::vector<runtime::TensorMap>> inputs =
          runtime::MakeRandomInputs(unfused, world_size, t, seed);
      ASSERT_TRUE(inputs.ok()) << inputs.status().ToString();
      if (poke)
        for (runtime::TensorMap& rank_inputs : *inputs) poke(rank_inputs);
      StatusOr<runtime::RankOutputs> ref = cpu->Run(unfused, *inputs);
      ASSERT_TRUE(ref.ok()) << ref.status().ToString();
      StatusOr<runtime::RankOutputs> got = cpu->Run(fused, *inputs);
      ASSERT_TRUE(got.ok()) << got.status().ToString() << "\n" << Print(fused);
      ASSERT_EQ(ref->size(), got->size());
      for (size_t r = 0; r < ref->size(); ++r) {
        ASSERT_EQ((*ref)[r].size(), (*got)[r].size());
        for (size_t o = 0; o < (*ref)[r].size(); ++o) {
          const HostTensor& a = (*ref)[r][o];
          const HostTensor& b = (*got)[r][o];
          ASSERT_EQ(a.nbytes(), b.nbytes()) << "output " << o;
          const auto* pa = static_cast<const unsigned char*>(a.data());
          const auto* pb = static_cast<const unsigned char*>(b.data());
          size_t first = a.nbytes();
          for (size_t i = 0; i < a.nbytes(); ++i) {
            if (pa[i] != pb[i]) {
              first = i;
              break;
            }
          }
          EXPECT_EQ(first, a.nbytes()) << "rank " << r << " output " << o
                                       << " differs first at byte " << first;
        }
      }
    }
  }
}

inline void ExpectSameOutputs(const Compiled& c, int world_size = 2) {
  ASSERT_TRUE(c.ok());
  ExpectSameOutputs(*c.before, *c.after, world_size);
}

}  // namespace tpfuse::passes::testing
