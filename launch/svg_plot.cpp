// SVG line plots (see svg_plot.h). Coordinates: data (x, y) -> pixels through the axis domains,
// y growing downwards in SVG, so the y mapping is flipped.
#include "launch/svg_plot.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>

namespace lora {

namespace {

constexpr const char* kPalette[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                                    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};
constexpr int kPaletteSize = sizeof(kPalette) / sizeof(kPalette[0]);

constexpr double kInf = std::numeric_limits<double>::infinity();

// "12.5", "0.002", "3": as many decimals as the tick step needs.
std::string tick_label(double v, double step) {
  char buf[64];
  if (std::fabs(v) < step * 1e-9) v = 0.0;  // -0.000 and rounding noise at zero
  const double a = std::fabs(v);
  if (a != 0.0 && (a >= 1e6 || a < 1e-4)) {
    std::snprintf(buf, sizeof buf, "%g", v);
    return buf;
  }
  int decimals = 0;
  while (decimals < 8 && std::fabs(step * std::pow(10.0, decimals) -
                                   std::round(step * std::pow(10.0, decimals))) > 1e-6) {
    ++decimals;
  }
  std::snprintf(buf, sizeof buf, "%.*f", decimals, v);
  return buf;
}

std::string num(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f", v);
  return buf;
}

struct Axis {
  double lo = 0.0, hi = 1.0;  // domain, in axis units (log2(x) on a log2 axis)
  double pix_lo = 0.0, pix_hi = 1.0;
  double to_pixel(double v) const { return pix_lo + (v - lo) / (hi - lo) * (pix_hi - pix_lo); }
};

}  // namespace

std::string xml_escape(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&apos;"; break;
      default:
        // Control characters have no place in XML 1.0 text.
        if (static_cast<unsigned char>(c) < 0x20 && c != '\t' && c != '\n') out += ' ';
        else out += c;
    }
  }
  return out;
}

std::vector<double> nice_ticks(double lo, double hi, int target) {
  target = std::max(target, 2);
  if (!(hi > lo)) {
    const double pad = lo != 0.0 ? std::fabs(lo) * 0.05 : 1.0;
    lo -= pad;
    hi += pad;
  }
  const double raw = (hi - lo) / (target - 1);
  const double power = std::pow(10.0, std::floor(std::log10(raw)));
  double step = 10.0 * power;
  for (double m : {1.0, 2.0, 2.5, 5.0}) {
    if (m * power >= raw) {
      step = m * power;
      break;
    }
  }
  const double first = std::floor(lo / step + 1e-9) * step;
  const double last = std::ceil(hi / step - 1e-9) * step;
  std::vector<double> ticks;
  for (int i = 0;; ++i) {
    const double t = first + i * step;
    if (t > last + step * 1e-6) break;
    ticks.push_back(t);
  }
  if (ticks.size() < 2) ticks.push_back(ticks.back() + step);
  return ticks;
}

std::string render_line_plot(const PlotSpec& spec, const std::vector<PlotSeries>& series) {
  const double W = spec.width, H = spec.height;
  const double left = 78, top = 44, right = W - 210, bottom = H - 58;

  auto x_of = [&](double x) { return spec.log2_x ? (x > 0 ? std::log2(x) : -kInf) : x; };
  auto usable = [&](double x, double y) { return std::isfinite(x_of(x)) && std::isfinite(y); };

  double x_min = kInf, x_max = -kInf, y_min = kInf, y_max = -kInf;
  for (const PlotSeries& s : series) {
    for (size_t i = 0; i < s.x.size() && i < s.y.size(); ++i) {
      if (!usable(s.x[i], s.y[i])) continue;
      x_min = std::min(x_min, x_of(s.x[i]));
      x_max = std::max(x_max, x_of(s.x[i]));
      y_min = std::min(y_min, s.y[i]);
      y_max = std::max(y_max, s.y[i]);
    }
  }
  const bool empty = !(x_min <= x_max);
  if (empty) {
    x_min = 0.0;  // 1 .. 8 on a log2 axis
    x_max = spec.log2_x ? 3.0 : 1.0;
    y_min = 0.0;
    y_max = 1.0;
  }

  // x ticks: powers of two on a log2 axis (every other one when there are many), nice otherwise.
  std::vector<double> x_ticks;  // in axis units
  Axis xa, ya;
  if (spec.log2_x) {
    double k_lo = std::floor(x_min), k_hi = std::ceil(x_max);
    if (k_hi == k_lo) {
      k_lo -= 1;
      k_hi += 1;
    }
    const double every = k_hi - k_lo > 12 ? 2.0 : 1.0;
    for (double k = k_lo; k <= k_hi + 1e-9; k += every) x_ticks.push_back(k);
    xa.lo = k_lo - 0.25;
    xa.hi = k_hi + 0.25;
  } else {
    if (spec.x_from_zero) x_min = std::min(x_min, 0.0);
    x_ticks = nice_ticks(x_min, x_max, 7);
    xa.lo = x_ticks.front();
    xa.hi = x_ticks.back();
  }
  // A little room above and below, so extreme points do not sit on the frame.
  const double y_pad = 0.03 * (y_max - y_min);
  const std::vector<double> y_ticks = nice_ticks(y_min - y_pad, y_max + y_pad, 6);
  ya.lo = y_ticks.front();
  ya.hi = y_ticks.back();
  xa.pix_lo = left;
  xa.pix_hi = right;
  ya.pix_lo = bottom;
  ya.pix_hi = top;

  std::string o;
  o += "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" + num(W) + "\" height=\"" + num(H) +
       "\" viewBox=\"0 0 " + num(W) + " " + num(H) + "\" font-family=\"sans-serif\" font-size=\"12\">\n";
  o += "<rect x=\"0\" y=\"0\" width=\"" + num(W) + "\" height=\"" + num(H) + "\" fill=\"white\"/>\n";
  o += "<text x=\"" + num((left + right) / 2) + "\" y=\"26\" text-anchor=\"middle\" font-size=\"16\" "
       "font-weight=\"bold\">" + xml_escape(spec.title) + "</text>\n";

  // Grid lines and tick labels.
  o += "<g stroke=\"#dddddd\" stroke-width=\"1\">\n";
  for (double t : x_ticks) {
    const double px = xa.to_pixel(t);
    o += "<line x1=\"" + num(px) + "\" y1=\"" + num(top) + "\" x2=\"" + num(px) + "\" y2=\"" +
         num(bottom) + "\"/>\n";
  }
  for (double t : y_ticks) {
    const double py = ya.to_pixel(t);
    o += "<line x1=\"" + num(left) + "\" y1=\"" + num(py) + "\" x2=\"" + num(right) + "\" y2=\"" +
         num(py) + "\"/>\n";
  }
  o += "</g>\n";
  o += "<rect x=\"" + num(left) + "\" y=\"" + num(top) + "\" width=\"" + num(right - left) +
       "\" height=\"" + num(bottom - top) + "\" fill=\"none\" stroke=\"black\"/>\n";
  o += "<g fill=\"black\">\n";
  const double x_step = x_ticks.size() > 1 ? x_ticks[1] - x_ticks[0] : 1.0;
  for (double t : x_ticks) {
    std::string label;
    if (spec.log2_x) label = tick_label(std::exp2(t), std::exp2(t) >= 1 ? 1.0 : std::exp2(t));
    else label = tick_label(t, x_step);
    o += "<text x=\"" + num(xa.to_pixel(t)) + "\" y=\"" + num(bottom + 18) +
         "\" text-anchor=\"middle\">" + xml_escape(label) + "</text>\n";
  }
  const double y_step = y_ticks.size() > 1 ? y_ticks[1] - y_ticks[0] : 1.0;
  for (double t : y_ticks) {
    o += "<text x=\"" + num(left - 6) + "\" y=\"" + num(ya.to_pixel(t) + 4) +
         "\" text-anchor=\"end\">" + xml_escape(tick_label(t, y_step)) + "</text>\n";
  }
  o += "</g>\n";
  o += "<text x=\"" + num((left + right) / 2) + "\" y=\"" + num(H - 16) +
       "\" text-anchor=\"middle\" font-size=\"13\">" + xml_escape(spec.x_label) + "</text>\n";
  o += "<text x=\"20\" y=\"" + num((top + bottom) / 2) + "\" text-anchor=\"middle\" font-size=\"13\" "
       "transform=\"rotate(-90 20 " + num((top + bottom) / 2) + ")\">" + xml_escape(spec.y_label) +
       "</text>\n";
  if (empty) {
    o += "<text x=\"" + num((left + right) / 2) + "\" y=\"" + num((top + bottom) / 2) +
         "\" text-anchor=\"middle\" fill=\"#888888\">no data</text>\n";
  }

  // Series, then the legend.
  for (size_t s = 0; s < series.size(); ++s) {
    const char* color = kPalette[s % kPaletteSize];
    std::string points;
    std::string circles;
    const PlotSeries& ps = series[s];
    for (size_t i = 0; i < ps.x.size() && i < ps.y.size(); ++i) {
      if (!usable(ps.x[i], ps.y[i])) continue;
      const std::string px = num(xa.to_pixel(x_of(ps.x[i]))), py = num(ya.to_pixel(ps.y[i]));
      points += (points.empty() ? "" : " ") + px + "," + py;
      if (spec.markers) circles += "<circle cx=\"" + px + "\" cy=\"" + py + "\" r=\"3\"/>";
    }
    o += "<g>\n<title>" + xml_escape(ps.label) + "</title>\n";
    o += "<polyline fill=\"none\" stroke=\"" + std::string(color) +
         "\" stroke-width=\"2\" points=\"" + points + "\"/>\n";
    if (!circles.empty()) o += "<g fill=\"" + std::string(color) + "\">" + circles + "</g>\n";
    o += "</g>\n";
  }
  const double row = std::min(18.0, (bottom - top) / std::max<double>(1, series.size()));
  for (size_t s = 0; s < series.size(); ++s) {
    const double y = top + 8 + row * s;
    std::string label = series[s].label;
    if (label.size() > 30) label = label.substr(0, 29) + "...";
    o += "<line x1=\"" + num(right + 14) + "\" y1=\"" + num(y) + "\" x2=\"" + num(right + 38) +
         "\" y2=\"" + num(y) + "\" stroke=\"" + kPalette[s % kPaletteSize] + "\" stroke-width=\"3\"/>";
    o += "<text x=\"" + num(right + 44) + "\" y=\"" + num(y + 4) + "\">" + xml_escape(label) +
         "</text>\n";
  }
  o += "</svg>\n";
  return o;
}

}  // namespace lora
