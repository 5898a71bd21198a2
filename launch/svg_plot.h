// A small SVG line-plot writer for run reports: no plotting dependency, just text.
//
// render_line_plot draws one chart: a title, a framed plot area with "nice" ticks and grid lines
// on both axes (linear, or log2 on x), the axis labels, one <polyline> per series (plus a circle
// per point when markers are on) and a legend to the right of the plot (colour swatches drawn
// with <line>, so the only polylines in the file are the series). Points whose x or y is not
// finite (or x <= 0 on a log2 axis) are left out. An empty chart still has axes and says
// "no data".
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace lora {

struct PlotSeries {
  std::string label;
  std::vector<double> x;
  std::vector<double> y;  // same length as x
};

struct PlotSpec {
  std::string title;
  std::string x_label;
  std::string y_label;
  bool log2_x = false;  // x ticks at powers of two
  bool markers = true;  // a circle at every point
  bool x_from_zero = false;  // a linear x axis starts at 0 (steps)
  int width = 860;      // pixels, legend included
  int height = 480;
};

std::string render_line_plot(const PlotSpec& spec, const std::vector<PlotSeries>& series);

// Tick values covering [lo, hi] at a step of 1, 2, 2.5 or 5 times a power of ten, about
// `target` of them (at least 2). lo <= hi; a zero-width range is widened around its value.
std::vector<double> nice_ticks(double lo, double hi, int target);

// Escapes &, <, >, " and ' for XML text and attribute values.
std::string xml_escape(std::string_view text);

}  // namespace lora
