// Node attributes: number, "string", true/false, bare NAME, or a list of items.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace tpfuse::ir {

struct Attr {
  enum class Kind { kInt, kFloat, kString, kBool, kName, kList };

  Kind kind = Kind::kInt;
  int64_t i = 0;
  double f = 0.0;
  bool b = false;
  std::string s;           // kString and kName
  std::vector<Attr> list;  // kList: items are kInt, kFloat, kString or kName

  static Attr Int(int64_t v) { Attr a; a.kind = Kind::kInt; a.i = v; return a; }
  static Attr Float(double v) { Attr a; a.kind = Kind::kFloat; a.f = v; return a; }
  static Attr Str(std::string v) { Attr a; a.kind = Kind::kString; a.s = std::move(v); return a; }
  static Attr Bool(bool v) { Attr a; a.kind = Kind::kBool; a.b = v; return a; }
  static Attr Name(std::string v) { Attr a; a.kind = Kind::kName; a.s = std::move(v); return a; }
  static Attr List(std::vector<Attr> v) { Attr a; a.kind = Kind::kList; a.list = std::move(v); return a; }
  static Attr StrList(const std::vector<std::string>& v);

  bool is_number() const { return kind == Kind::kInt || kind == Kind::kFloat; }
  // Numbers as double (ints converted); nullopt otherwise.
  std::optional<double> AsNumber() const;
  // Strings and bare names alike (enum-valued attributes accept `quant = fp8_group` and
  // `quant = "fp8_group"`); nullopt otherwise.
  std::optional<std::string> AsText() const;
  // A list whose items are all strings/names.
  std::optional<std::vector<std::string>> AsTextList() const;

  bool operator==(const Attr&) const = default;
  // The .tpg spelling: 1e-06, 128, "group", true, f32, [T, 4096], ["norm", "quant"].
  std::string ToString() const;
};

// Sorted by name: printing is stable, so parse -> print -> parse is a fixpoint.
using AttrMap = std::map<std::string, Attr>;

}  // namespace tpfuse::ir
