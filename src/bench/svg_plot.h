// A small SVG writer for the benchmark's plots: latency against token count on log-log axes,
// one polyline per path. Plain C++ (no Python, no plotting library), so `tpfuse bench` draws its
// own plots on any machine and the CPU suite tests them.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "tpfuse/status.h"

namespace tpfuse::plot {

struct Point {
  double x = 0;
  double y = 0;
};

struct Series {
  std::string name;           // the legend entry
  std::vector<Point> points;  // drawn in this order; points with x <= 0 or y <= 0 are dropped
  std::string color = "#1f77b4";
  double stroke_width = 1.8;
  bool dashed = false;
  // An SVG stroke-dasharray (e.g. "2 3") for more line styles than `dashed`; overrides it.
  std::string dash_array;
  // A wide, pale line drawn under the others (e.g. the path that coincides with another one).
  bool highlight = false;
};

struct LogLogChart {
  std::string title;
  std::string subtitle;
  std::string x_label;
  std::string y_label;
  // Ticks at powers of two on x (token counts); otherwise 1-2-5 ticks per decade.
  bool x_ticks_base2 = false;
  std::vector<Series> series;
  int width = 900;
  int height = 560;
};

// A standalone SVG 1.1 document (UTF-8): both axes log10, a tick and grid line at every tick
// value (each tick carries data-value="v"), one <polyline class="series"> and circle markers
// per series that has a point, and a legend with one <g class="legend-entry"> per series (a
// series without points is listed as "(no data)"). Error when no series has a positive point.
StatusOr<std::string> RenderLogLogSvg(const LogLogChart& chart);

// Escapes &, <, >, " and ' for XML text and attribute values.
std::string XmlEscape(std::string_view text);

// Tick values covering [lo, hi] (lo > 0): powers of two, or 1-2-5 per decade (only powers of
// ten when the range spans more than four decades). Exposed for the tests.
std::vector<double> LogTicks(double lo, double hi, bool base2);

}  // namespace tpfuse::plot
