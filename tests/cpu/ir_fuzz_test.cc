// Seeded random mutations of every test graph. The parser must either succeed (and then
// print -> parse round-trips to the same text) or fail with "<source>:<line>:<col>: <problem>"
// pointing inside the text. It must never crash, hang or throw.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "ir/parser.h"
#include "ir/printer.h"
#include "ir/verifier.h"

namespace tpfuse::ir {
namespace {

// Mutants per test graph; TPFUSE_IR_FUZZ_MUTANTS raises it for a longer local run (e.g. under
// sanitizers).
int MutantsPerGraph() {
  const char* env = std::getenv("TPFUSE_IR_FUZZ_MUTANTS");
  return env != nullptr && std::atoi(env) > 0 ? std::atoi(env) : 600;
}
constexpr char kSource[] = "fuzz.tpg";

std::vector<std::pair<std::string, std::string>> LoadTestGraphs() {
  std::vector<std::pair<std::string, std::string>> graphs;
  for (const auto& entry :
       std::filesystem::directory_iterator(std::string(TPFUSE_TEST_DATA_DIR) + "/ir")) {
    if (entry.path().extension() != ".tpg") continue;
    std::ifstream in(entry.path(), std::ios::binary);
    std::ostringstream text;
    text << in.rdbuf();
    graphs.emplace_back(entry.path().filename().string(), text.str());
  }
  std::sort(graphs.begin(), graphs.end());
  return graphs;
}

// Tokens worth inserting: the language's own words and punctuation, near misses, and the
// inputs that stress number, string and name handling.
const std::vector<std::string>& Vocabulary() {
  // clang-format off
  static const std::vector<std::string> words = {
      "func", "return", "@f", "%x", "%y", "%new", "%", "@", "(", ")", "{", "}", "[", "]", ",",
      "=", ":", "#", "\n", " ", "\"", "\"s\"", "\"unterminated", "\\", "bf16", "f32", "f8e4m3",
      "i32", "bf61", "T", "pad4(T)", "pad0(T)", "pad4(", "0", "1", "-1", "128", "4096", "1e-6",
      "1e", "1.5.2", "-inf", "inf", "nan", "+", "-", ".5", "99999999999999999999",
      "9223372036854775807", "1e999", "2147483648", "true", "false", "all_reduce", "add", "mul",
      "rms_norm", "fused_add_rms_norm", "quant_fp8", "matmul", "scaled_matmul",
      "allreduce_rmsnorm", "view", "mean", "cast", "eps", "emit", "mode", "shape", "group",
      "scalar", "[norm, quant]", "\x01", "\xff", std::string(1, '\0'), "$", "\t", "\r"};
  // clang-format on
  return words;
}

// Splits text into runs of name characters, runs of spaces, and single other characters, so
// that token mutations keep the text's own pieces.
std::vector<std::string> SplitTokens(const std::string& text) {
  std::vector<std::string> tokens;
  auto is_word = [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '.' || c == '%' ||
           c == '@' || c == '-';
  };
  size_t i = 0;
  while (i < text.size()) {
    size_t j = i + 1;
    if (is_word(text[i])) {
      while (j < text.size() && is_word(text[j])) ++j;
    } else if (text[i] == ' ') {
      while (j < text.size() && text[j] == ' ') ++j;
    }
    tokens.push_back(text.substr(i, j - i));
    i = j;
  }
  return tokens;
}

std::vector<std::string> SplitLines(const std::string& text) {
  std::vector<std::string> lines;
  std::string line;
  std::istringstream in(text);
  while (std::getline(in, line)) lines.push_back(line + "\n");
  return lines;
}

template <class T>
std::string Join(const std::vector<T>& parts) {
  std::string out;
  for (const auto& p : parts) out += p;
  return out;
}

class Mutator {
 public:
  explicit Mutator(uint64_t seed) : rng_(seed) {}

  std::string Mutate(std::string text) {
    const int count = 1 + int(Below(4));
    for (int i = 0; i < count; ++i) text = MutateOnce(text);
    return text;
  }

 private:
  size_t Below(size_t n) {
    return n == 0 ? 0 : std::uniform_int_distribution<size_t>(0, n - 1)(rng_);
  }

  template <class T>
  void Edit(std::vector<T>& parts, int kind) {
    if (parts.empty()) return;
    const size_t a = Below(parts.size());
    const size_t b = Below(parts.size());
    switch (kind) {
      case 0: parts.erase(parts.begin() + a); break;
      case 1: parts.insert(parts.begin() + a, parts[a]); break;
      case 2: std::swap(parts[a], parts[b]); break;
    }
  }

  std::string MutateOnce(const std::string& text) {
    switch (Below(11)) {
      case 0:
      case 1:
      case 2: {  // characters: delete, duplicate, swap
        std::vector<char> chars(text.begin(), text.end());
        Edit(chars, int(Below(3)));
        return std::string(chars.begin(), chars.end());
      }
      case 3:
      case 4:
      case 5: {  // tokens: delete, duplicate, swap
        std::vector<std::string> tokens = SplitTokens(text);
        Edit(tokens, int(Below(3)));
        return Join(tokens);
      }
      case 6:
      case 7: {  // lines: delete, duplicate, swap
        std::vector<std::string> lines = SplitLines(text);
        Edit(lines, int(Below(3)));
        return Join(lines);
      }
      case 8:
      case 9: {  // insert a token from the vocabulary
        std::vector<std::string> tokens = SplitTokens(text);
        tokens.insert(tokens.begin() + Below(tokens.size() + 1),
                      Vocabulary()[Below(Vocabulary().size())]);
        return Join(tokens);
      }
      default:  // truncate
        return text.substr(0, Below(text.size() + 1));
    }
  }

  std::mt19937_64 rng_;
};

// Splits "fuzz.tpg:<line>:<col>: <problem>" (problem non-empty); false if the message has
// another shape. (No std::regex: its recursion is unsafe on long messages.)
bool SplitError(const std::string& message, long* line, long* column, std::string* problem) {
  const std::string prefix = std::string(kSource) + ":";
  if (message.rfind(prefix, 0) != 0) return false;
  size_t pos = prefix.size();
  auto read_number = [&](long* out) {
    const size_t start = pos;
    while (pos < message.size() && std::isdigit(static_cast<unsigned char>(message[pos]))) ++pos;
    if (pos == start || pos - start > 9) return false;
    *out = std::stol(message.substr(start, pos - start));
    return true;
  };
  if (!read_number(line) || message[pos++] != ':' || !read_number(column)) return false;
  if (message.compare(pos, 2, ": ") != 0 || pos + 2 >= message.size()) return false;
  *problem = message.substr(pos + 2);
  return !std::isspace(static_cast<unsigned char>((*problem)[0]));
}

// Whether line:col falls inside the text (col may be one past the end of its line).
bool PositionInRange(const std::string& text, long line, long column) {
  if (line < 1 || column < 1) return false;
  long current = 1;
  size_t start = 0;
  while (current < line) {
    const size_t nl = text.find('\n', start);
    if (nl == std::string::npos) return false;
    start = nl + 1;
    ++current;
  }
  size_t end = text.find('\n', start);
  if (end == std::string::npos) end = text.size();
  return column <= long(end - start) + 1;
}

TEST(IrFuzzTest, MutatedGraphsParseOrFailWithAPosition) {
  const auto graphs = LoadTestGraphs();
  ASSERT_GE(graphs.size(), 8u);
  const int mutants = MutantsPerGraph();
  int parsed = 0, rejected = 0;
  std::map<std::string, int> problems;  // error message shape -> count, for the summary
  for (size_t g = 0; g < graphs.size(); ++g) {
    const auto& [name, original] = graphs[g];
    Mutator mutator(0x7f5e + g);
    for (int i = 0; i < mutants; ++i) {
      const std::string text = mutator.Mutate(original);
      StatusOr<Module> module = ParseModule(text, kSource);
      if (module.ok()) {
        ++parsed;
        const std::string printed = PrintModule(*module);
        StatusOr<Module> again = ParseModule(printed, "printed");
        ASSERT_TRUE(again.ok()) << name << " mutant " << i
                                << ": printed text does not parse: " << again.status().message()
                                << "\n--- mutant:\n"
                                << text << "\n--- printed:\n"
                                << printed;
        ASSERT_EQ(PrintModule(*again), printed) << name << " mutant " << i;
        for (const auto& f : again->funcs) ASSERT_TRUE(Verify(*f).ok());
        continue;
      }
      ++rejected;
      const std::string message = module.status().message();
      long line = 0, column = 0;
      std::string problem;
      ASSERT_TRUE(SplitError(message, &line, &column, &problem))
          << name << " mutant " << i << ": " << message << "\n--- mutant:\n"
          << text;
      ASSERT_EQ(module.status().code(), StatusCode::kInvalidArgument) << message;
      ASSERT_TRUE(PositionInRange(text, line, column))
          << name << " mutant " << i << ": " << message << " is outside the text:\n"
          << text;
      problems[problem.substr(0, problem.find_first_of("'%\"0123456789"))]++;
    }
  }
  // Both outcomes are exercised, and the errors are of many kinds, not one.
  EXPECT_GT(parsed, 100);
  EXPECT_GT(rejected, 1000);
  EXPECT_GT(problems.size(), 15u);
  std::ostringstream kinds;
  for (const auto& [problem, n] : problems) kinds << n << " x " << problem << "\n";
  RecordProperty("error_kinds", kinds.str());
  std::cout << parsed << " mutants parsed, " << rejected << " rejected with " << problems.size()
            << " kinds of error\n";
}

TEST(IrFuzzTest, HostileInputs) {
  // Inputs no mutation is likely to reach: very long, deeply bracketed, binary.
  std::vector<std::string> inputs = {
      std::string(100000, '['),
      std::string(100000, '('),
      "func @f(%x: f32[" + std::string(50000, '1') + "]) { return %x }",
      "func @f(%x: f32[2]) {\n  %y = view(%x) {shape = [" + std::string(20000, '[') + "]}\n}",
      "func @f(%x: f32[2]) {\n  return %x\n}\n" + std::string(10000, '}'),
      std::string("func\0@f", 7),
      "\xef\xbb\xbf"
      "func @f(%x: f32[2]) { return %x }",  // a byte-order mark
      "func @" + std::string(100000, 'a') + "(%x: f32[2]) { return %x }",
  };
  std::string many_statements = "func @f(%v0: f32[4]) {\n";
  for (int i = 1; i <= 20000; ++i)
    many_statements += "  %v" + std::to_string(i) + " = rsqrt(%v" + std::to_string(i - 1) + ")\n";
  inputs.push_back(many_statements + "  return %v20000\n}\n");
  std::string binary;
  std::mt19937 rng(7);
  for (int i = 0; i < 20000; ++i) binary += char(rng() & 0xff);
  inputs.push_back(binary);

  int index = 0;
  for (const std::string& text : inputs) {
    SCOPED_TRACE(index++);
    StatusOr<Module> module = ParseModule(text, kSource);
    if (module.ok()) continue;
    const std::string message = module.status().message();
    long line = 0, column = 0;
    std::string problem;
    ASSERT_TRUE(SplitError(message, &line, &column, &problem)) << message.substr(0, 200);
    EXPECT_TRUE(PositionInRange(text, line, column)) << message.substr(0, 200);
  }
  // The long chain is valid and parses.
  StatusOr<Module> chain = ParseModule(inputs[8], kSource);
  ASSERT_TRUE(chain.ok()) << chain.status().message();
  EXPECT_EQ(chain->funcs[0]->num_nodes(), 20000);
}

}  // namespace
}  // namespace tpfuse::ir
