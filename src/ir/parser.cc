// The .tpg parser: a hand-written lexer and a recursive-descent parser over Contract 1's grammar.
//
// NOTE: it must not crash on any input (the fuzz test holds it to that):
//   - nothing recurses: attribute lists do not nest, so every rule is a loop;
//   - numbers go through std::from_chars, so overflow is an error, never a wrap;
//   - every token look-up stays inside the token vector, which always ends with kEnd;
//   - positions are those of real tokens (or of the end of the text), so line:col is in range.
#include "ir/parser.h"

#include <charconv>
#include <exception>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <sstream>
#include <utility>

#include "ir/ops.h"
#include "ir/verifier.h"

namespace tpfuse::ir {
namespace {

// ---------------------------------------------------------------- tokens

enum class TokenKind {
  kEnd,
  kError,  // a lexical error; `text` is the message
  kName,   // func, return, op names, dtypes, symbols, attribute names and values
  kValue,  // %name (text without the '%')
  kFunc,   // @name (text without the '@')
  kInt,
  kFloat,
  kString,  // text is the unescaped contents
  kPunct,   // ( ) { } [ ] , = :
};

struct Token {
  TokenKind kind = TokenKind::kEnd;
  std::string text;
  int line = 1;
  int column = 1;
  int64_t int_value = 0;
  double float_value = 0.0;
};

bool IsNameStart(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }
bool IsDigit(char c) { return c >= '0' && c <= '9'; }
bool IsNameChar(char c) { return IsNameStart(c) || IsDigit(c); }
bool IsValueNameChar(char c) { return IsNameChar(c) || c == '.'; }

// Printable ASCII as is, anything else as \xNN: error messages stay one readable line.
std::string Printable(std::string_view text, size_t max_chars = 40) {
  std::string out;
  for (size_t i = 0; i < text.size(); ++i) {
    if (i == max_chars) {
      out += "...";
      break;
    }
    const unsigned char c = static_cast<unsigned char>(text[i]);
    if (c >= 0x20 && c < 0x7f) {
      out += char(c);
    } else {
      static const char kHex[] = "0123456789abcdef";
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  return out;
}

// Splits the text into tokens. Stops after the first lexical error, which becomes a kError
// token: the parser reports it when it reaches it, so errors come out in source order.
class Lexer {
 public:
  explicit Lexer(std::string_view text) : text_(text) {}

  std::vector<Token> Run() {
    std::vector<Token> tokens;
    for (;;) {
      Token t = Next();
      const TokenKind kind = t.kind;
      tokens.push_back(std::move(t));
      if (kind == TokenKind::kEnd || kind == TokenKind::kError) break;
    }
    if (tokens.back().kind == TokenKind::kError) {
      // A sentinel end so that the parser never reads past the vector.
      Token end = tokens.back();
      end.kind = TokenKind::kEnd;
      tokens.push_back(end);
    }
    return tokens;
  }

 private:
  bool AtEnd() const { return pos_ >= text_.size(); }
  char Peek(size_t ahead = 0) const {
    return pos_ + ahead < text_.size() ? text_[pos_ + ahead] : '\0';
  }
  void Advance() {
    if (text_[pos_] == '\n') {
      ++line_;
      column_ = 1;
    } else {
      ++column_;
    }
    ++pos_;
  }

  Token Make(TokenKind kind, std::string text, int line, int column) const {
    Token t;
    t.kind = kind;
    t.text = std::move(text);
    t.line = line;
    t.column = column;
    return t;
  }

  void SkipSpaceAndComments() {
    while (!AtEnd()) {
      const char c = Peek();
      if (c == '#') {
        while (!AtEnd() && Peek() != '\n') Advance();
      } else if (c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\f' || c == '\v') {
        Advance();
      } else {
        break;
      }
    }
  }

  // Whether a number starts here: 12, -3, +1.5, .5, -inf.
  bool AtNumber() const {
    char c = Peek();
    size_t k = 0;
    if (c == '-' || c == '+') c = Peek(++k);
    if (IsDigit(c)) return true;
    if (c == '.' && IsDigit(Peek(k + 1))) return true;
    return k == 1 && c == 'i' && Peek(2) == 'n' && Peek(3) == 'f' && !IsNameChar(Peek(4));
  }

  Token Next() {
    SkipSpaceAndComments();
    const int line = line_, column = column_;
    if (AtEnd()) return Make(TokenKind::kEnd, "", line, column);
    const char c = Peek();
    if (IsNameStart(c)) {
      const size_t start = pos_;
      while (!AtEnd() && IsNameChar(Peek())) Advance();
      return Make(TokenKind::kName, std::string(text_.substr(start, pos_ - start)), line, column);
    }
    if (c == '%' || c == '@') {
      Advance();
      const size_t start = pos_;
      while (!AtEnd() && IsValueNameChar(Peek())) Advance();
      if (pos_ == start)
        return Make(TokenKind::kError,
                    StrCat("expected a name after '", c, "'",
                           AtEnd() ? "" : ", found '" + Printable(text_.substr(pos_, 1)) + "'"),
                    line, column);
      return Make(c == '%' ? TokenKind::kValue : TokenKind::kFunc,
                  std::string(text_.substr(start, pos_ - start)), line, column);
    }
    if (AtNumber()) return LexNumber(line, column);
    if (c == '"') return LexString(line, column);
    if (std::string_view("(){}[],=:*").find(c) != std::string_view::npos) {
      Advance();
      return Make(TokenKind::kPunct, std::string(1, c), line, column);
    }
    return Make(TokenKind::kError,
                StrCat("unexpected character '", Printable(text_.substr(pos_, 1)), "'"), line,
                column);
  }

  Token LexNumber(int line, int column) {
    const size_t start = pos_;
    bool is_float = false;
    if (Peek() == '-' || Peek() == '+') Advance();
    if (Peek() == 'i') {  // -inf / +inf (AtNumber checked the spelling)
      for (int k = 0; k < 3; ++k) Advance();
      Token t =
          Make(TokenKind::kFloat, std::string(text_.substr(start, pos_ - start)), line, column);
      t.float_value = text_[start] == '-' ? -std::numeric_limits<double>::infinity()
                                          : std::numeric_limits<double>::infinity();
      return t;
    }
    while (IsDigit(Peek())) Advance();
    if (Peek() == '.') {
      is_float = true;
      Advance();
      while (IsDigit(Peek())) Advance();
    }
    if (Peek() == 'e' || Peek() == 'E') {
      const size_t k = (Peek(1) == '-' || Peek(1) == '+') ? 2 : 1;
      if (IsDigit(Peek(k))) {
        is_float = true;
        for (size_t i = 0; i < k; ++i) Advance();
        while (IsDigit(Peek())) Advance();
      }
    }
    // "12abc", "1e", "1.5.2": one malformed number rather than two confusing tokens.
    if (IsNameChar(Peek()) || Peek() == '.') {
      while (!AtEnd() && (IsValueNameChar(Peek()) || Peek() == '+' || Peek() == '-')) Advance();
      return Make(TokenKind::kError,
                  StrCat("malformed number '", Printable(text_.substr(start, pos_ - start)), "'"),
                  line, column);
    }
    std::string_view spelled = text_.substr(start, pos_ - start);
    // from_chars takes no leading '+'.
    std::string_view digits = spelled[0] == '+' ? spelled.substr(1) : spelled;
    Token t =
        Make(is_float ? TokenKind::kFloat : TokenKind::kInt, std::string(spelled), line, column);
    std::from_chars_result r;
    if (is_float) {
      r = std::from_chars(digits.data(), digits.data() + digits.size(), t.float_value);
    } else {
      r = std::from_chars(digits.data(), digits.data() + digits.size(), t.int_value);
    }
    if (r.ec == std::errc::result_out_of_range)
      return Make(TokenKind::kError, StrCat("number ", Printable(spelled), " is out of range"),
                  line, column);
    if (r.ec != std::errc() || r.ptr != digits.data() + digits.size())
      return Make(TokenKind::kError, StrCat("malformed number '", Printable(spelled), "'"), line,
                  column);
    return t;
  }

  Token LexString(int line, int column) {
    Advance();  // opening quote
    std::string value;
    for (;;) {
      if (AtEnd() || Peek() == '\n')
        return Make(TokenKind::kError, "unterminated string", line, column);
      const char c = Peek();
      if (c == '"') {
        Advance();
        return Make(TokenKind::kString, std::move(value), line, column);
      }
      if (c == '\\') {
        const int esc_line = line_, esc_column = column_;
        Advance();
        const char e = Peek();
        if (e == '"' || e == '\\') {
          value += e;
          Advance();
          continue;
        }
        if (AtEnd() || e == '\n')
          return Make(TokenKind::kError, "unterminated string", line, column);
        return Make(TokenKind::kError,
                    StrCat("unknown escape '\\", Printable(std::string_view(&e, 1)),
                           "' in string (only \\\" and \\\\ are allowed)"),
                    esc_line, esc_column);
      }
      value += c;
      Advance();
    }
  }

  std::string_view text_;
  size_t pos_ = 0;
  int line_ = 1;
  int column_ = 1;
};

// ---------------------------------------------------------------- parser

struct Position {
  int line = 0;
  int column = 0;
};

class Parser {
 public:
  Parser(std::string_view text, std::string source)
      : tokens_(Lexer(text).Run()), source_(std::move(source)) {}

  // The module, and where each func starts (for errors about whole funcs).
  StatusOr<Module> ParseModule(std::vector<Position>* func_starts) {
    Module module;
    std::map<std::string, Position> func_names;
    do {
      if (!IsName("func"))
        return Unexpected(module.funcs.empty() ? "'func'" : "'func' or end of input");
      func_starts->push_back(At(Cur()));
      TPFUSE_ASSIGN_OR_RETURN(std::unique_ptr<Graph> graph, ParseFunc(func_names));
      module.funcs.push_back(std::move(graph));
    } while (Cur().kind != TokenKind::kEnd);
    return module;
  }

  template <class... Args>
  Status ErrorAt(Position at, const Args&... args) const {
    return InvalidArgument(source_, ":", at.line, ":", at.column, ": ", args...);
  }

 private:
  using Scope = std::map<std::string, Position>;  // value name -> where it was defined

  const Token& Cur() const { return tokens_[pos_]; }
  static Position At(const Token& t) { return Position{t.line, t.column}; }
  void Advance() {
    if (Cur().kind != TokenKind::kEnd) ++pos_;
  }
  bool IsPunct(char c) const { return Cur().kind == TokenKind::kPunct && Cur().text[0] == c; }
  bool IsName(std::string_view word) const {
    return Cur().kind == TokenKind::kName && Cur().text == word;
  }

  static std::string Describe(const Token& t) {
    switch (t.kind) {
      case TokenKind::kEnd: return "end of input";
      case TokenKind::kValue: return StrCat("'%", Printable(t.text), "'");
      case TokenKind::kFunc: return StrCat("'@", Printable(t.text), "'");
      case TokenKind::kString: return StrCat("string \"", Printable(t.text), "\"");
      default: return StrCat("'", Printable(t.text), "'");
    }
  }

  // "expected <what>, found <token>"; a lexical error at this point is reported instead.
  Status Unexpected(const std::string& expected) const {
    const Token& t = Cur();
    if (t.kind == TokenKind::kError) return ErrorAt(At(t), t.text);
    return ErrorAt(At(t), "expected ", expected, ", found ", Describe(t));
  }

  Status ExpectPunct(char c) {
    if (!IsPunct(c)) return Unexpected(StrCat("'", c, "'"));
    Advance();
    return Status::Ok();
  }

  StatusOr<Token> Expect(TokenKind kind, const std::string& expected) {
    if (Cur().kind != kind) return Unexpected(expected);
    Token t = Cur();
    Advance();
    return t;
  }

  // func := 'func' '@' NAME '(' [param {',' param}] ')' '{' {stmt} 'return' ... '}'
  StatusOr<std::unique_ptr<Graph>> ParseFunc(std::map<std::string, Position>& func_names) {
    Advance();  // 'func'
    TPFUSE_ASSIGN_OR_RETURN(Token name, Expect(TokenKind::kFunc, "a function name '@name'"));
    if (auto it = func_names.find(name.text); it != func_names.end())
      return ErrorAt(At(name), "func @", name.text, " defined twice (first at ", it->second.line,
                     ":", it->second.column, ")");
    func_names[name.text] = At(name);
    auto graph = std::make_unique<Graph>(name.text);
    Scope scope;
    TPFUSE_RETURN_IF_ERROR(ExpectPunct('('));
    if (!IsPunct(')')) {
      for (;;) {
        TPFUSE_RETURN_IF_ERROR(ParseParam(*graph, scope));
        if (!IsPunct(',')) break;
        Advance();
      }
    }
    TPFUSE_RETURN_IF_ERROR(ExpectPunct(')'));
    TPFUSE_RETURN_IF_ERROR(ExpectPunct('{'));
    for (;;) {
      if (Cur().kind == TokenKind::kValue) {
        TPFUSE_RETURN_IF_ERROR(ParseStatement(*graph, scope));
      } else if (IsName("return")) {
        break;
      } else if (IsPunct('}')) {
        return ErrorAt(At(Cur()), "missing 'return' at the end of func @", name.text);
      } else {
        return Unexpected("a statement '%name = op(...)' or 'return'");
      }
    }
    Advance();  // 'return'
    std::vector<Value*> outputs;
    for (;;) {
      TPFUSE_ASSIGN_OR_RETURN(Value * v, ParseUse(*graph, "a returned value '%name'"));
      outputs.push_back(v);
      if (!IsPunct(',')) break;
      Advance();
    }
    TPFUSE_RETURN_IF_ERROR(ExpectPunct('}'));
    graph->SetOutputs(outputs);
    if (Status verified = Verify(*graph); !verified.ok())
      return ErrorAt(At(name), "func @", name.text, " does not verify: ", verified.message());
    return graph;
  }

  // A value definition: checks that the name is new to `scope` and to `pending` (the earlier
  // results of the same statement).
  StatusOr<Token> ParseDef(const Scope& scope, const Scope& pending, const std::string& expected) {
    TPFUSE_ASSIGN_OR_RETURN(Token t, Expect(TokenKind::kValue, expected));
    for (const Scope* s : {&scope, &pending}) {
      if (auto it = s->find(t.text); it != s->end())
        return ErrorAt(At(t), "value %", t.text, " defined twice (first at ", it->second.line, ":",
                       it->second.column, ")");
    }
    return t;
  }

  // A use of a defined value.
  StatusOr<Value*> ParseUse(const Graph& graph, const std::string& expected) {
    TPFUSE_ASSIGN_OR_RETURN(Token t, Expect(TokenKind::kValue, expected));
    Value* v = graph.FindValue(t.text);
    if (v == nullptr) return ErrorAt(At(t), "undefined value %", t.text);
    return v;
  }

  // param := VALUE ':' DTYPE '[' [dim {',' dim}] ']'
  Status ParseParam(Graph& graph, Scope& scope) {
    TPFUSE_ASSIGN_OR_RETURN(Token name, ParseDef(scope, {}, "a parameter '%name'"));
    TPFUSE_RETURN_IF_ERROR(ExpectPunct(':'));
    TPFUSE_ASSIGN_OR_RETURN(TensorType type, ParseType());
    scope[name.text] = At(name);
    graph.AddParam(name.text, std::move(type));
    return Status::Ok();
  }

  StatusOr<TensorType> ParseType() {
    TPFUSE_ASSIGN_OR_RETURN(Token dtype_name, Expect(TokenKind::kName, "a dtype"));
    std::optional<DType> dtype = ParseDType(dtype_name.text);
    if (!dtype)
      return ErrorAt(At(dtype_name), "unknown dtype '", Printable(dtype_name.text),
                     "' (expected bf16, f16, f32, f8e4m3 or i32)");
    TensorType type{*dtype, {}};
    TPFUSE_RETURN_IF_ERROR(ExpectPunct('['));
    if (!IsPunct(']')) {
      for (;;) {
        TPFUSE_ASSIGN_OR_RETURN(Dim dim, ParseDim());
        type.shape.push_back(std::move(dim));
        if (!IsPunct(',')) break;
        Advance();
      }
    }
    TPFUSE_RETURN_IF_ERROR(ExpectPunct(']'));
    return type;
  }

  // A product that starts with the constant `c` (already read): c '*' SYMBOL {'*' SYMBOL}, the
  // constant 2..max (a 1 or 0 would make another spelling of a plain dim).
  StatusOr<std::string> ParseConstantProduct(const Token& c) {
    if (c.int_value < 2 || c.int_value > kMaxDimValue)
      return ErrorAt(At(c), "the constant factor of a product dim must be 2..", kMaxDimValue,
                     ", got ", c.int_value);
    if (!IsPunct('*')) return Unexpected("'*' after a product's constant factor");
    return ParseProduct(std::to_string(c.int_value));
  }

  // product := SYMBOL {'*' SYMBOL}: "B*S" after the first symbol `first`.
  StatusOr<std::string> ParseProduct(std::string first) {
    while (IsPunct('*')) {
      Advance();
      TPFUSE_ASSIGN_OR_RETURN(Token factor, Expect(TokenKind::kName, "a symbol after '*'"));
      first += "*" + factor.text;
    }
    return first;
  }

  // dim := integer | product | padN(product) (the last as printed for padded scale layouts);
  // a product may start with a constant factor (2*S: a constant batch times a length).
  StatusOr<Dim> ParseDim() {
    const Token t = Cur();
    if (t.kind == TokenKind::kInt) {
      if (t.int_value < 0 || t.int_value > kMaxDimValue)
        return ErrorAt(At(t), "dimension ", t.int_value, " is out of range [0, ", kMaxDimValue,
                       "]");
      Advance();
      if (IsPunct('*')) {
        TPFUSE_ASSIGN_OR_RETURN(std::string product, ParseConstantProduct(t));
        return Dim::Sym(std::move(product));
      }
      return Dim::Const(t.int_value);
    }
    if (t.kind != TokenKind::kName) return Unexpected("a dimension (integer or symbol)");
    Advance();
    if (!IsPunct('(')) {
      TPFUSE_ASSIGN_OR_RETURN(std::string symbol, ParseProduct(t.text));
      return Dim::Sym(std::move(symbol));
    }
    // padN(T): round T up to a multiple of N.
    int64_t align = 0;
    bool is_pad = false;
    if (t.text.size() > 3 && t.text.compare(0, 3, "pad") == 0) {
      const std::string_view digits = std::string_view(t.text).substr(3);
      const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), align);
      is_pad = ec == std::errc() && end == digits.data() + digits.size();
    }
    if (!is_pad || align < 1 || align > kMaxDimValue)
      return ErrorAt(At(t), "expected a dimension (integer, symbol or padN(symbol)), found '",
                     Printable(t.text), "('");
    Advance();  // '('
    std::string product;
    if (Cur().kind == TokenKind::kInt) {  // pad4(2*T)
      const Token c = Cur();
      Advance();
      TPFUSE_ASSIGN_OR_RETURN(product, ParseConstantProduct(c));
    } else {
      TPFUSE_ASSIGN_OR_RETURN(Token symbol, Expect(TokenKind::kName, "a symbol"));
      TPFUSE_ASSIGN_OR_RETURN(product, ParseProduct(symbol.text));
    }
    TPFUSE_RETURN_IF_ERROR(ExpectPunct(')'));
    return Dim::Sym(std::move(product), align);
  }

  // stmt := VALUE {',' VALUE} '=' OP '(' [VALUE {',' VALUE}] ')' ['{' attr {',' attr} '}']
  //         [':' TYPE {',' TYPE}]
  Status ParseStatement(Graph& graph, Scope& scope) {
    std::vector<Token> results;
    Scope defined_here;
    for (;;) {
      TPFUSE_ASSIGN_OR_RETURN(Token r, ParseDef(scope, defined_here, "a result '%name'"));
      defined_here[r.text] = At(r);
      results.push_back(std::move(r));
      if (!IsPunct(',')) break;
      Advance();
    }
    TPFUSE_RETURN_IF_ERROR(ExpectPunct('='));
    TPFUSE_ASSIGN_OR_RETURN(Token op, Expect(TokenKind::kName, "an op name"));
    const OpDef* def = FindOp(op.text);
    if (def == nullptr) {
      const std::string hint = ClosestOpName(op.text);
      return ErrorAt(At(op), "unknown op '", Printable(op.text), "'",
                     hint.empty() ? "" : " (did you mean '" + hint + "'?)");
    }
    TPFUSE_RETURN_IF_ERROR(ExpectPunct('('));
    std::vector<Value*> operands;
    if (!IsPunct(')')) {
      for (;;) {
        TPFUSE_ASSIGN_OR_RETURN(Value * v, ParseUse(graph, "an operand '%name'"));
        operands.push_back(v);
        if (!IsPunct(',')) break;
        Advance();
      }
    }
    TPFUSE_RETURN_IF_ERROR(ExpectPunct(')'));
    AttrMap attrs;
    if (IsPunct('{')) {
      Advance();
      for (;;) {
        TPFUSE_ASSIGN_OR_RETURN(Token name, Expect(TokenKind::kName, "an attribute name"));
        if (attrs.count(name.text))
          return ErrorAt(At(name), "attribute '", name.text, "' given twice");
        TPFUSE_RETURN_IF_ERROR(ExpectPunct('='));
        TPFUSE_ASSIGN_OR_RETURN(Attr value, ParseAttrValue());
        // Reported at the attribute rather than at the op: the reader sees which one is wrong.
        if (Status ok = CheckAttribute(*def, name.text, value); !ok.ok())
          return ErrorAt(At(name), ok.message());
        attrs[name.text] = std::move(value);
        if (!IsPunct(',')) break;
        Advance();
      }
      TPFUSE_RETURN_IF_ERROR(ExpectPunct('}'));
    }

    // Declared result types: ': TYPE {, TYPE}' (required for opaque, checked for the others).
    std::vector<TensorType> declared;
    std::vector<Position> declared_at;
    if (IsPunct(':')) {
      Advance();
      for (;;) {
        declared_at.push_back(At(Cur()));
        TPFUSE_ASSIGN_OR_RETURN(TensorType t, ParseType());
        declared.push_back(std::move(t));
        if (!IsPunct(',')) break;
        Advance();
      }
    }

    std::vector<TensorType> operand_types;
    for (Value* v : operands) operand_types.push_back(v->type());
    StatusOr<std::vector<TensorType>> types = declared;
    if (def->kind == OpKind::kOpaque) {
      if (declared.empty())
        return ErrorAt(At(op), "opaque needs declared result types: '%y = opaque(%x) {name = "
                               "\"aten.foo\"} : bf16[T, 4096]'");
      if (Status ok = CheckOpaque(attrs, declared); !ok.ok()) return ErrorAt(At(op), ok.message());
    } else {
      types = InferResultTypes(op.text, operand_types, attrs);
      if (!types.ok()) return ErrorAt(At(op), types.status().message());
      if (!declared.empty() && declared.size() != types->size())
        return ErrorAt(declared_at[0], op.text, " produces ", types->size(),
                       types->size() == 1 ? " result" : " results", ", ", declared.size(),
                       " types are declared");
      for (size_t i = 0; i < declared.size(); ++i) {
        if (declared[i] != (*types)[i])
          return ErrorAt(declared_at[i], "declared type ", declared[i].ToString(), " of result ",
                         i, " differs from what ", op.text, " gives: ", (*types)[i].ToString());
      }
    }
    if (types->size() != results.size())
      return ErrorAt(At(results[0]), op.text, " produces ", types->size(),
                     types->size() == 1 ? " result" : " results", " here, but ", results.size(),
                     results.size() == 1 ? " name is" : " names are", " given");
    std::vector<std::string> names;
    for (const Token& r : results) {
      names.push_back(r.text);
      scope[r.text] = At(r);
    }
    Node* node = graph.AddNode(op.text, operands, std::move(attrs), names, *types);
    node->set_location(results[0].line, results[0].column);
    return Status::Ok();
  }

  // attr value := number | "string" | true | false | NAME | '[' [item {',' item}] ']'
  StatusOr<Attr> ParseAttrValue() {
    if (IsPunct('[')) {
      Advance();
      std::vector<Attr> items;
      if (!IsPunct(']')) {
        for (;;) {
          TPFUSE_ASSIGN_OR_RETURN(Attr item, ParseScalar(/*in_list=*/true));
          items.push_back(std::move(item));
          if (!IsPunct(',')) break;
          Advance();
        }
      }
      TPFUSE_RETURN_IF_ERROR(ExpectPunct(']'));
      return Attr::List(std::move(items));
    }
    return ParseScalar(/*in_list=*/false);
  }

  // item := number | "string" | NAME; outside lists also true | false. `inf` and `nan` are
  // numbers: the printer writes non-finite floats that way.
  StatusOr<Attr> ParseScalar(bool in_list) {
    const Token t = Cur();
    switch (t.kind) {
      case TokenKind::kInt:
        Advance();
        if (in_list && IsPunct('*')) {  // a product with a constant factor: [2*S, 4096]
          TPFUSE_ASSIGN_OR_RETURN(std::string product, ParseConstantProduct(t));
          return Attr::Name(std::move(product));
        }
        return Attr::Int(t.int_value);
      case TokenKind::kFloat: Advance(); return Attr::Float(t.float_value);
      case TokenKind::kString: Advance(); return Attr::Str(t.text);
      case TokenKind::kName:
        Advance();
        if (t.text == "inf") return Attr::Float(std::numeric_limits<double>::infinity());
        if (t.text == "nan") return Attr::Float(std::numeric_limits<double>::quiet_NaN());
        if (!in_list && t.text == "true") return Attr::Bool(true);
        if (!in_list && t.text == "false") return Attr::Bool(false);
        if (in_list && IsPunct('*')) {  // a product of symbols in a shape: [B*S, 4096]
          TPFUSE_ASSIGN_OR_RETURN(std::string product, ParseProduct(t.text));
          return Attr::Name(std::move(product));
        }
        return Attr::Name(t.text);
      default:
        return Unexpected(in_list ? "a list item (number, \"string\" or name)"
                                  : "an attribute value (number, \"string\", true, false, name "
                                    "or [list])");
    }
  }

  std::vector<Token> tokens_;
  size_t pos_ = 0;
  std::string source_;
};

StatusOr<Module> ParseWithStarts(std::string_view text, const std::string& source_name,
                                 std::vector<Position>* func_starts) {
  // NOTE: the parser reports every problem as a Status; this guard only turns a bug (or an
  // allocation failure) into an error instead of taking the caller down.
  try {
    Parser parser(text, source_name);
    return parser.ParseModule(func_starts);
  } catch (const std::exception& e) {
    return Internal(source_name, ": internal parser error: ", e.what());
  }
}

}  // namespace

StatusOr<Module> ParseModule(std::string_view text, const std::string& source_name) {
  std::vector<Position> func_starts;
  return ParseWithStarts(text, source_name, &func_starts);
}

StatusOr<std::unique_ptr<Graph>> ParseGraph(std::string_view text, const std::string& source_name) {
  std::vector<Position> func_starts;
  TPFUSE_ASSIGN_OR_RETURN(Module module, ParseWithStarts(text, source_name, &func_starts));
  if (module.funcs.size() != 1) {
    const Position second = func_starts.at(1);
    return InvalidArgument(source_name, ":", second.line, ":", second.column,
                           ": expected exactly one func, found ", module.funcs.size());
  }
  return std::move(module.funcs[0]);
}

StatusOr<Module> ParseModuleFile(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec))
    return InvalidArgument(path, " is a directory, not a graph");
  std::ifstream in(path, std::ios::binary);
  if (!in) return NotFound("cannot open ", path);
  std::ostringstream contents;
  contents << in.rdbuf();
  if (in.bad()) return InvalidArgument("cannot read ", path);
  return ParseModule(contents.str(), path);
}

}  // namespace tpfuse::ir
