#include "bench/svg_plot.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <sstream>

namespace tpfuse::plot {
namespace {

// Frame of the plot area inside the document (pixels).
constexpr double kMarginLeft = 78;
constexpr double kMarginRight = 200;  // the legend lives here
constexpr double kMarginTop = 64;     // title and subtitle
constexpr double kMarginBottom = 58;
constexpr double kLegendRow = 18;

std::string Num(double v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.2f", v);
  return buf;
}

// A tick label: 8192 -> "8192", 0.5 -> "0.5", 2e-05 -> "2e-05".
std::string TickLabel(double v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%g", v);
  return buf;
}

bool Valid(const Point& p) {
  return std::isfinite(p.x) && std::isfinite(p.y) && p.x > 0 && p.y > 0;
}

// The series' stroke-dasharray, "" for a solid line.
std::string DashArray(const Series& s) {
  if (!s.dash_array.empty()) return s.dash_array;
  return s.dashed ? "6 4" : "";
}

// The 1-2-5 value at or below v (toward_lower) or at or above it.
double Nice125(double v, bool toward_lower) {
  const double decade = std::pow(10.0, std::floor(std::log10(v)));
  static constexpr double kSteps[] = {1, 2, 5, 10};
  if (toward_lower) {
    double best = decade;
    for (double m : kSteps) {
      if (m * decade <= v * (1 + 1e-12)) best = m * decade;
    }
    return best;
  }
  for (double m : kSteps) {
    if (m * decade >= v * (1 - 1e-12)) return m * decade;
  }
  return 10 * decade;
}

// A log10 axis from lo to hi mapped onto pixels [p0, p1] (p1 < p0 for y: up is larger).
struct LogAxis {
  double lo = 1, hi = 10, p0 = 0, p1 = 1;
  double Map(double v) const {
    const double t = (std::log10(v) - std::log10(lo)) / (std::log10(hi) - std::log10(lo));
    return p0 + t * (p1 - p0);
  }
};

// Axis limits around [min, max]: powers of two with a quarter-octave of padding, or the
// enclosing 1-2-5 values. A single value gets a factor of two on each side.
void AxisLimits(double min, double max, bool base2, double* lo, double* hi) {
  if (base2) {
    *lo = min / std::pow(2.0, 0.25);
    *hi = max * std::pow(2.0, 0.25);
  } else {
    *lo = Nice125(min, /*toward_lower=*/true);
    *hi = Nice125(max, /*toward_lower=*/false);
  }
  if (!(*hi > *lo * (1 + 1e-9))) {
    *lo /= 2;
    *hi *= 2;
  }
}

}  // namespace

std::string XmlEscape(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&apos;"; break;
      default: out += c;
    }
  }
  return out;
}

std::vector<double> LogTicks(double lo, double hi, bool base2) {
  std::vector<double> ticks;
  if (!(lo > 0) || !(hi >= lo) || !std::isfinite(hi)) return ticks;
  const double lo_eps = lo * (1 - 1e-9), hi_eps = hi * (1 + 1e-9);
  if (base2) {
    for (int k = int(std::ceil(std::log2(lo_eps))); k <= int(std::floor(std::log2(hi_eps))); ++k)
      ticks.push_back(std::ldexp(1.0, k));
    return ticks;
  }
  const int d0 = int(std::floor(std::log10(lo_eps)));
  const int d1 = int(std::ceil(std::log10(hi_eps)));
  const bool decades_only = d1 - d0 > 4;
  for (int d = d0; d <= d1; ++d) {
    for (double m : {1.0, 2.0, 5.0}) {
      if (decades_only && m != 1.0) continue;
      // Exact powers of ten for d < 0 too (1e-1 rather than 0.1000000001).
      const double v = d >= 0 ? m * std::pow(10.0, d) : m / std::pow(10.0, -d);
      if (v >= lo_eps && v <= hi_eps) ticks.push_back(v);
    }
  }
  return ticks;
}

StatusOr<std::string> RenderLogLogSvg(const LogLogChart& chart) {
  double xmin = INFINITY, xmax = -INFINITY, ymin = INFINITY, ymax = -INFINITY;
  for (const Series& s : chart.series) {
    for (const Point& p : s.points) {
      if (!Valid(p)) continue;
      xmin = std::min(xmin, p.x);
      xmax = std::max(xmax, p.x);
      ymin = std::min(ymin, p.y);
      ymax = std::max(ymax, p.y);
    }
  }
  if (!(xmin <= xmax))
    return InvalidArgument("plot '", chart.title, "': no series has a positive point");
  if (chart.width < 400 || chart.height < 300)
    return InvalidArgument("plot '", chart.title, "': ", chart.width, "x", chart.height,
                           " is too small (at least 400x300)");

  const double w = chart.width, h = chart.height;
  LogAxis x_axis, y_axis;
  AxisLimits(xmin, xmax, chart.x_ticks_base2, &x_axis.lo, &x_axis.hi);
  AxisLimits(ymin, ymax, /*base2=*/false, &y_axis.lo, &y_axis.hi);
  x_axis.p0 = kMarginLeft;
  x_axis.p1 = w - kMarginRight;
  y_axis.p0 = h - kMarginBottom;
  y_axis.p1 = kMarginTop;
  const double left = x_axis.p0, right = x_axis.p1, top = y_axis.p1, bottom = y_axis.p0;

  std::ostringstream os;
  os << "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
     << "<svg xmlns=\"http://www.w3.org/2000/svg\" version=\"1.1\" width=\"" << chart.width
     << "\" height=\"" << chart.height << "\" viewBox=\"0 0 " << chart.width << " " << chart.height
     << "\" font-family=\"Helvetica, Arial, sans-serif\" font-size=\"12\">\n";
  os << "<rect x=\"0\" y=\"0\" width=\"" << chart.width << "\" height=\"" << chart.height
     << "\" fill=\"white\"/>\n";
  os << "<text class=\"title\" x=\"" << Num(w / 2) << "\" y=\"24\" text-anchor=\"middle\" "
     << "font-size=\"15\" font-weight=\"bold\">" << XmlEscape(chart.title) << "</text>\n";
  if (!chart.subtitle.empty()) {
    os << "<text class=\"subtitle\" x=\"" << Num(w / 2) << "\" y=\"44\" text-anchor=\"middle\" "
       << "fill=\"#555555\">" << XmlEscape(chart.subtitle) << "</text>\n";
  }

  // ---------------------------------------------------------------- axes, ticks, grid
  const std::vector<double> x_ticks = LogTicks(x_axis.lo, x_axis.hi, chart.x_ticks_base2);
  const std::vector<double> y_ticks = LogTicks(y_axis.lo, y_axis.hi, /*base2=*/false);
  // Label every tick while they fit (about 45 px each), else every n-th.
  const size_t x_label_step =
      std::max<size_t>(1, (x_ticks.size() * 45 + size_t(right - left) - 1) / size_t(right - left));

  os << "<g class=\"x-axis\" data-scale=\"log10\" data-min=\"" << x_axis.lo << "\" data-max=\""
     << x_axis.hi << "\">\n";
  os << "<line class=\"axis-line\" x1=\"" << Num(left) << "\" y1=\"" << Num(bottom) << "\" x2=\""
     << Num(right) << "\" y2=\"" << Num(bottom) << "\" stroke=\"#333333\"/>\n";
  for (size_t i = 0; i < x_ticks.size(); ++i) {
    const double px = x_axis.Map(x_ticks[i]);
    os << "<g class=\"tick\" data-value=\"" << x_ticks[i] << "\" data-pos=\"" << Num(px) << "\">"
       << "<line x1=\"" << Num(px) << "\" y1=\"" << Num(top) << "\" x2=\"" << Num(px) << "\" y2=\""
       << Num(bottom) << "\" stroke=\"#e4e4e4\"/>"
       << "<line x1=\"" << Num(px) << "\" y1=\"" << Num(bottom) << "\" x2=\"" << Num(px)
       << "\" y2=\"" << Num(bottom + 5) << "\" stroke=\"#333333\"/>";
    if (i % x_label_step == 0) {
      os << "<text x=\"" << Num(px) << "\" y=\"" << Num(bottom + 18) << "\" text-anchor=\"middle\">"
         << TickLabel(x_ticks[i]) << "</text>";
    }
    os << "</g>\n";
  }
  os << "<text class=\"axis-label\" x=\"" << Num((left + right) / 2) << "\" y=\"" << Num(h - 16)
     << "\" text-anchor=\"middle\">" << XmlEscape(chart.x_label) << "</text>\n";
  os << "</g>\n";

  os << "<g class=\"y-axis\" data-scale=\"log10\" data-min=\"" << y_axis.lo << "\" data-max=\""
     << y_axis.hi << "\">\n";
  os << "<line class=\"axis-line\" x1=\"" << Num(left) << "\" y1=\"" << Num(top) << "\" x2=\""
     << Num(left) << "\" y2=\"" << Num(bottom) << "\" stroke=\"#333333\"/>\n";
  for (double v : y_ticks) {
    const double py = y_axis.Map(v);
    os << "<g class=\"tick\" data-value=\"" << v << "\" data-pos=\"" << Num(py) << "\">"
       << "<line x1=\"" << Num(left) << "\" y1=\"" << Num(py) << "\" x2=\"" << Num(right)
       << "\" y2=\"" << Num(py) << "\" stroke=\"#e4e4e4\"/>"
       << "<line x1=\"" << Num(left - 5) << "\" y1=\"" << Num(py) << "\" x2=\"" << Num(left)
       << "\" y2=\"" << Num(py) << "\" stroke=\"#333333\"/>"
       << "<text x=\"" << Num(left - 8) << "\" y=\"" << Num(py + 4) << "\" text-anchor=\"end\">"
       << TickLabel(v) << "</text></g>\n";
  }
  const double y_label_x = 20, y_label_y = (top + bottom) / 2;
  os << "<text class=\"axis-label\" x=\"" << Num(y_label_x) << "\" y=\"" << Num(y_label_y)
     << "\" text-anchor=\"middle\" transform=\"rotate(-90 " << Num(y_label_x) << " "
     << Num(y_label_y) << ")\">" << XmlEscape(chart.y_label) << "</text>\n";
  os << "</g>\n";

  // ---------------------------------------------------------------- series
  // Highlights first, so the ordinary lines stay visible on top of them.
  os << "<g class=\"plot-area\">\n";
  for (int pass = 0; pass < 2; ++pass) {
    for (const Series& s : chart.series) {
      if (s.highlight != (pass == 0)) continue;
      std::vector<Point> points;
      for (const Point& p : s.points) {
        if (Valid(p)) points.push_back(p);
      }
      if (points.empty()) continue;
      os << "<polyline class=\"series\" data-name=\"" << XmlEscape(s.name) << "\" fill=\"none\" "
         << "stroke=\"" << XmlEscape(s.color) << "\" stroke-width=\""
         << Num(s.highlight ? std::max(6.0, 4 * s.stroke_width) : s.stroke_width) << "\"";
      if (s.highlight) os << " stroke-opacity=\"0.3\" stroke-linecap=\"round\"";
      if (!DashArray(s).empty()) os << " stroke-dasharray=\"" << XmlEscape(DashArray(s)) << "\"";
      os << " points=\"";
      for (size_t i = 0; i < points.size(); ++i) {
        os << (i ? " " : "") << Num(x_axis.Map(points[i].x)) << "," << Num(y_axis.Map(points[i].y));
      }
      os << "\"/>\n";
      if (!s.highlight) {
        for (const Point& p : points) {
          os << "<circle cx=\"" << Num(x_axis.Map(p.x)) << "\" cy=\"" << Num(y_axis.Map(p.y))
             << "\" r=\"2.5\" fill=\"" << XmlEscape(s.color) << "\"/>\n";
        }
      }
    }
  }
  os << "</g>\n";

  // ---------------------------------------------------------------- legend
  const double lx = right + 16;
  os << "<g class=\"legend\">\n";
  for (size_t i = 0; i < chart.series.size(); ++i) {
    const Series& s = chart.series[i];
    const bool has_data = std::any_of(s.points.begin(), s.points.end(), Valid);
    const double ly = top + 8 + kLegendRow * double(i);
    os << "<g class=\"legend-entry\"><line x1=\"" << Num(lx) << "\" y1=\"" << Num(ly) << "\" x2=\""
       << Num(lx + 24) << "\" y2=\"" << Num(ly) << "\" stroke=\"" << XmlEscape(s.color)
       << "\" stroke-width=\"" << Num(s.highlight ? 6.0 : s.stroke_width) << "\"";
    if (s.highlight) os << " stroke-opacity=\"0.3\"";
    if (!DashArray(s).empty()) os << " stroke-dasharray=\"" << XmlEscape(DashArray(s)) << "\"";
    os << "/><text x=\"" << Num(lx + 30) << "\" y=\"" << Num(ly + 4) << "\">" << XmlEscape(s.name)
       << (has_data ? "" : " (no data)") << "</text></g>\n";
  }
  os << "</g>\n";
  os << "</svg>\n";
  return os.str();
}

}  // namespace tpfuse::plot
