#include "ir/attr.h"

#include <charconv>
#include <cmath>

namespace tpfuse::ir {

Attr Attr::StrList(const std::vector<std::string>& v) {
  std::vector<Attr> items;
  for (const std::string& s : v) items.push_back(Str(s));
  return List(std::move(items));
}

std::optional<double> Attr::AsNumber() const {
  if (kind == Kind::kInt) return double(i);
  if (kind == Kind::kFloat) return f;
  return std::nullopt;
}

std::optional<std::string> Attr::AsText() const {
  if (kind == Kind::kString || kind == Kind::kName) return s;
  return std::nullopt;
}

std::optional<std::vector<std::string>> Attr::AsTextList() const {
  if (kind != Kind::kList) return std::nullopt;
  std::vector<std::string> out;
  for (const Attr& item : list) {
    auto t = item.AsText();
    if (!t) return std::nullopt;
    out.push_back(*t);
  }
  return out;
}

namespace {

std::string FormatDouble(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v < 0 ? "-inf" : "inf";
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);  // shortest round-trip form
  std::string s(buf, end);
  // Keep it a float literal when re-parsed: "2" -> "2.0".
  if (s.find_first_of(".eEn") == std::string::npos) s += ".0";
  return s;
}

std::string Quote(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

}  // namespace

std::string Attr::ToString() const {
  switch (kind) {
    case Kind::kInt: return std::to_string(i);
    case Kind::kFloat: return FormatDouble(f);
    case Kind::kString: return Quote(s);
    case Kind::kBool: return b ? "true" : "false";
    case Kind::kName: return s;
    case Kind::kList: {
      std::string out = "[";
      for (size_t k = 0; k < list.size(); ++k) out += (k ? ", " : "") + list[k].ToString();
      return out + "]";
    }
  }
  return "?";
}

}  // namespace tpfuse::ir
