// The benchmark's SVG writer: well-formed documents, log-log axes, one polyline per series,
// one legend entry per series, escaping.
#include "bench/svg_plot.h"

#include <gtest/gtest.h>

#include <cctype>
#include <cmath>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

namespace tpfuse::plot {
namespace {

// ---------------------------------------------------------------- a minimal XML checker

struct Element {
  std::string name;
  std::map<std::string, std::string> attrs;
};

// Checks that `doc` is one well-formed XML element tree after an optional <?xml ...?> prolog:
// balanced tags, quoted attributes without '<', no raw '<' or stray '&' in text, and only the
// five predefined entities or numeric references. Collects every start tag in document order.
// Returns an error description, or "" when well-formed.
std::string CheckWellFormed(const std::string& doc, std::vector<Element>* elements) {
  size_t i = 0;
  auto check_entities = [&](const std::string& text) -> std::string {
    for (size_t k = 0; k < text.size(); ++k) {
      if (text[k] == '<') return "raw '<' in text or attribute";
      if (text[k] != '&') continue;
      const size_t semi = text.find(';', k);
      if (semi == std::string::npos) return "unterminated entity";
      const std::string ent = text.substr(k + 1, semi - k - 1);
      const bool known = ent == "amp" || ent == "lt" || ent == "gt" || ent == "quot" ||
                         ent == "apos" || (!ent.empty() && ent[0] == '#');
      if (!known) return "unknown entity &" + ent + ";";
    }
    return "";
  };
  if (doc.compare(0, 5, "<?xml") == 0) {
    i = doc.find("?>");
    if (i == std::string::npos) return "unterminated prolog";
    i += 2;
  }
  std::vector<std::string> stack;
  bool seen_root = false;
  while (i < doc.size()) {
    const size_t lt = doc.find('<', i);
    const std::string text = doc.substr(i, lt == std::string::npos ? std::string::npos : lt - i);
    if (std::string e = check_entities(text); !e.empty()) return e;
    if (stack.empty() && text.find_first_not_of(" \t\r\n") != std::string::npos)
      return "text outside the root element";
    if (lt == std::string::npos) break;
    const size_t gt = doc.find('>', lt);
    if (gt == std::string::npos) return "unterminated tag";
    std::string tag = doc.substr(lt + 1, gt - lt - 1);
    i = gt + 1;
    if (!tag.empty() && tag[0] == '/') {
      const std::string name = tag.substr(1);
      if (stack.empty() || stack.back() != name) return "mismatched end tag </" + name + ">";
      stack.pop_back();
      continue;
    }
    if (stack.empty() && seen_root) return "a second root element";
    const bool self_closing = !tag.empty() && tag.back() == '/';
    if (self_closing) tag.pop_back();
    Element el;
    size_t k = 0;
    while (k < tag.size() && !std::isspace(static_cast<unsigned char>(tag[k]))) ++k;
    el.name = tag.substr(0, k);
    if (el.name.empty()) return "empty tag name";
    while (k < tag.size()) {
      while (k < tag.size() && std::isspace(static_cast<unsigned char>(tag[k]))) ++k;
      if (k >= tag.size()) break;
      const size_t eq = tag.find('=', k);
      if (eq == std::string::npos || eq + 1 >= tag.size() || tag[eq + 1] != '"')
        return "unquoted attribute in <" + el.name + ">";
      const std::string key = tag.substr(k, eq - k);
      const size_t close = tag.find('"', eq + 2);
      if (close == std::string::npos) return "unterminated attribute in <" + el.name + ">";
      const std::string value = tag.substr(eq + 2, close - eq - 2);
      if (std::string e = check_entities(value); !e.empty()) return e;
      if (el.attrs.count(key)) return "repeated attribute " + key;
      el.attrs[key] = value;
      k = close + 1;
    }
    elements->push_back(el);
    seen_root = true;
    if (!self_closing) stack.push_back(el.name);
  }
  if (!stack.empty()) return "unclosed <" + stack.back() + ">";
  if (!seen_root) return "no root element";
  return "";
}

size_t Count(const std::string& doc, const std::string& needle) {
  size_t n = 0;
  for (size_t p = doc.find(needle); p != std::string::npos; p = doc.find(needle, p + 1)) ++n;
  return n;
}

LogLogChart ThreePaths() {
  LogLogChart chart;
  chart.title = "2x NVIDIA H200: H=4096 fp8_group";
  chart.subtitle = "median of 50 replays";
  chart.x_label = "tokens T";
  chart.y_label = "latency per op (us)";
  chart.x_ticks_base2 = true;
  for (int s = 0; s < 3; ++s) {
    Series series;
    series.name = "path" + std::to_string(s);
    series.color = s == 0 ? "#d62728" : s == 1 ? "#1f77b4" : "#2ca02c";
    for (int t = 1; t <= 8192; t *= 2)
      series.points.push_back({double(t), (s + 1) * 4.0 + t * 0.03});
    chart.series.push_back(series);
  }
  return chart;
}

// Ticks of one axis group: data-value -> data-pos.
std::vector<std::pair<double, double>> Ticks(const std::vector<Element>& elements,
                                             const std::string& axis_class) {
  std::vector<std::pair<double, double>> ticks;
  bool inside = false;
  for (const Element& el : elements) {
    if (el.name == "g" && el.attrs.count("class")) {
      const std::string& cls = el.attrs.at("class");
      if (cls == "x-axis" || cls == "y-axis" || cls == "plot-area" || cls == "legend")
        inside = cls == axis_class;
      if (inside && cls == "tick")
        ticks.push_back({std::stod(el.attrs.at("data-value")), std::stod(el.attrs.at("data-pos"))});
    }
  }
  return ticks;
}

TEST(SvgPlot, DocumentIsWellFormedWithOnePolylineAndLegendEntryPerSeries) {
  StatusOr<std::string> svg = RenderLogLogSvg(ThreePaths());
  ASSERT_TRUE(svg.ok()) << svg.status().ToString();
  std::vector<Element> elements;
  ASSERT_EQ(CheckWellFormed(*svg, &elements), "") << *svg;
  ASSERT_FALSE(elements.empty());
  EXPECT_EQ(elements[0].name, "svg");
  EXPECT_EQ(elements[0].attrs["xmlns"], "http://www.w3.org/2000/svg");

  int polylines = 0, legend_entries = 0;
  for (const Element& el : elements) {
    if (el.name == "polyline") {
      ++polylines;
      EXPECT_EQ(el.attrs.at("class"), "series");
    }
    if (el.name == "g" && el.attrs.count("class") && el.attrs.at("class") == "legend-entry")
      ++legend_entries;
  }
  EXPECT_EQ(polylines, 3);
  EXPECT_EQ(legend_entries, 3);
  for (const char* name : {">path0<", ">path1<", ">path2<"})
    EXPECT_EQ(Count(*svg, name), 1u) << name;
  EXPECT_NE(svg->find("2x NVIDIA H200: H=4096 fp8_group"), std::string::npos);
  EXPECT_NE(svg->find(">tokens T<"), std::string::npos);
  EXPECT_NE(svg->find(">latency per op (us)<"), std::string::npos);
}

TEST(SvgPlot, BothAxesAreLogarithmic) {
  StatusOr<std::string> svg = RenderLogLogSvg(ThreePaths());
  ASSERT_TRUE(svg.ok()) << svg.status().ToString();
  std::vector<Element> elements;
  ASSERT_EQ(CheckWellFormed(*svg, &elements), "");
  for (const Element& el : elements) {
    if (el.name == "g" && el.attrs.count("class") &&
        (el.attrs.at("class") == "x-axis" || el.attrs.at("class") == "y-axis")) {
      EXPECT_EQ(el.attrs.at("data-scale"), "log10");
    }
  }
  // Pixel position is affine in log(value): equal ratios are equal distances.
  for (const char* axis : {"x-axis", "y-axis"}) {
    const auto ticks = Ticks(elements, axis);
    ASSERT_GE(ticks.size(), 3u) << axis;
    // Positions are printed to 0.01 px: take the slope from the two ends.
    const double slope = (ticks.back().second - ticks[0].second) /
                         (std::log(ticks.back().first) - std::log(ticks[0].first));
    for (size_t i = 1; i + 1 < ticks.size(); ++i) {
      const double predicted =
          ticks[0].second + slope * (std::log(ticks[i].first) - std::log(ticks[0].first));
      EXPECT_NEAR(ticks[i].second, predicted, 0.02) << axis << " tick " << ticks[i].first;
    }
  }
  // x ticks are the powers of two 1..8192 (token counts).
  const auto x_ticks = Ticks(elements, "x-axis");
  ASSERT_EQ(x_ticks.size(), 14u);
  for (size_t i = 0; i < x_ticks.size(); ++i) EXPECT_EQ(x_ticks[i].first, std::ldexp(1.0, int(i)));
}

TEST(SvgPlot, PointsLandOnTheirTicks) {
  LogLogChart chart;
  chart.title = "t";
  Series s;
  s.name = "one";
  s.points = {{1, 10}, {100, 1000}};
  chart.series.push_back(s);
  StatusOr<std::string> svg = RenderLogLogSvg(chart);
  ASSERT_TRUE(svg.ok());
  std::vector<Element> elements;
  ASSERT_EQ(CheckWellFormed(*svg, &elements), "");
  std::map<double, double> x_pos, y_pos;
  for (auto [v, p] : Ticks(elements, "x-axis")) x_pos[v] = p;
  for (auto [v, p] : Ticks(elements, "y-axis")) y_pos[v] = p;
  ASSERT_TRUE(x_pos.count(1) && x_pos.count(100) && y_pos.count(10) && y_pos.count(1000));
  std::string points;
  for (const Element& el : elements) {
    if (el.name == "polyline") points = el.attrs.at("points");
  }
  double x0, y0, x1, y1;
  ASSERT_EQ(std::sscanf(points.c_str(), "%lf,%lf %lf,%lf", &x0, &y0, &x1, &y1), 4) << points;
  EXPECT_NEAR(x0, x_pos[1], 0.01);
  EXPECT_NEAR(y0, y_pos[10], 0.01);
  EXPECT_NEAR(x1, x_pos[100], 0.01);
  EXPECT_NEAR(y1, y_pos[1000], 0.01);
  EXPECT_LT(y1, y0);  // larger values are higher up
}

TEST(SvgPlot, EscapesTextAndListsEmptySeries) {
  LogLogChart chart = ThreePaths();
  chart.title = "a<b & \"c\" 'd'";
  chart.series[0].name = "B (= nccl <strategy>)";
  Series empty;
  empty.name = "oneshot";
  empty.points = {{0, 1}, {4, -1}};  // nothing drawable
  chart.series.push_back(empty);
  StatusOr<std::string> svg = RenderLogLogSvg(chart);
  ASSERT_TRUE(svg.ok()) << svg.status().ToString();
  std::vector<Element> elements;
  ASSERT_EQ(CheckWellFormed(*svg, &elements), "") << *svg;
  EXPECT_NE(svg->find("a&lt;b &amp; &quot;c&quot; &apos;d&apos;"), std::string::npos);
  EXPECT_NE(svg->find("B (= nccl &lt;strategy&gt;)"), std::string::npos);
  EXPECT_EQ(Count(*svg, "<polyline"), 3u);
  EXPECT_EQ(Count(*svg, "class=\"legend-entry\""), 4u);
  EXPECT_NE(svg->find("oneshot (no data)"), std::string::npos);
}

TEST(SvgPlot, HighlightAndDashedSeriesAreStyled) {
  LogLogChart chart = ThreePaths();
  chart.series[1].highlight = true;
  chart.series[2].dashed = true;
  StatusOr<std::string> svg = RenderLogLogSvg(chart);
  ASSERT_TRUE(svg.ok());
  std::vector<Element> elements;
  ASSERT_EQ(CheckWellFormed(*svg, &elements), "");
  std::vector<std::string> order;
  for (const Element& el : elements) {
    if (el.name == "polyline") order.push_back(el.attrs.at("data-name"));
  }
  ASSERT_EQ(order.size(), 3u);
  EXPECT_EQ(order[0], "path1");  // highlights are drawn first, under the others
  EXPECT_NE(svg->find("stroke-dasharray"), std::string::npos);
}

TEST(SvgPlot, DashArrayOverridesDashedOnTheLineAndInTheLegend) {
  LogLogChart chart = ThreePaths();
  chart.series[0].dash_array = "2 3";
  chart.series[1].dashed = true;
  chart.series[1].dash_array = "10 3 2 3";
  StatusOr<std::string> svg = RenderLogLogSvg(chart);
  ASSERT_TRUE(svg.ok());
  std::vector<Element> elements;
  ASSERT_EQ(CheckWellFormed(*svg, &elements), "");
  std::map<std::string, std::string> dash_of_polyline;
  for (const Element& el : elements) {
    if (el.name != "polyline") continue;
    const auto dash = el.attrs.find("stroke-dasharray");
    dash_of_polyline[el.attrs.at("data-name")] = dash == el.attrs.end() ? "" : dash->second;
  }
  EXPECT_EQ(dash_of_polyline["path0"], "2 3");
  EXPECT_EQ(dash_of_polyline["path1"], "10 3 2 3");
  EXPECT_EQ(dash_of_polyline["path2"], "");
  // Each styled series' legend sample carries its pattern too.
  EXPECT_EQ(Count(*svg, "stroke-dasharray=\"2 3\""), 2u);
  EXPECT_EQ(Count(*svg, "stroke-dasharray=\"10 3 2 3\""), 2u);
  EXPECT_EQ(svg->find("stroke-dasharray=\"6 4\""), std::string::npos);
}

TEST(SvgPlot, RejectsChartsWithoutData) {
  LogLogChart chart;
  chart.title = "empty";
  EXPECT_FALSE(RenderLogLogSvg(chart).ok());
  Series s;
  s.name = "zeros";
  s.points = {{1, 0}, {2, 0}};
  chart.series.push_back(s);
  EXPECT_FALSE(RenderLogLogSvg(chart).ok());
}

TEST(SvgPlot, SinglePointGetsARange) {
  LogLogChart chart;
  chart.title = "one point";
  chart.x_ticks_base2 = true;
  Series s;
  s.name = "p";
  s.points = {{128, 7.5}};
  chart.series.push_back(s);
  StatusOr<std::string> svg = RenderLogLogSvg(chart);
  ASSERT_TRUE(svg.ok()) << svg.status().ToString();
  std::vector<Element> elements;
  EXPECT_EQ(CheckWellFormed(*svg, &elements), "");
  EXPECT_EQ(Count(*svg, "<polyline"), 1u);
}

TEST(SvgPlot, LogTicks) {
  EXPECT_EQ(LogTicks(1, 8192, true).size(), 14u);
  EXPECT_EQ(LogTicks(0.8, 10.5, true), (std::vector<double>{1, 2, 4, 8}));
  EXPECT_EQ(LogTicks(1, 100, false), (std::vector<double>{1, 2, 5, 10, 20, 50, 100}));
  EXPECT_EQ(LogTicks(2, 20, false), (std::vector<double>{2, 5, 10, 20}));
  EXPECT_EQ(LogTicks(0.1, 1e6, false), (std::vector<double>{0.1, 1, 10, 100, 1000, 1e4, 1e5, 1e6}));
  EXPECT_TRUE(LogTicks(0, 1, false).empty());
}

TEST(SvgPlot, XmlEscape) {
  EXPECT_EQ(XmlEscape("plain µs"), "plain µs");
  EXPECT_EQ(XmlEscape("<&>\"'"), "&lt;&amp;&gt;&quot;&apos;");
}

}  // namespace
}  // namespace tpfuse::plot
