#include "tune/results.h"

#include <cairo.h>  // the plot: image surface, paths, toy text API, PNG encoder
#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "util/atomic_file.h"
#include "util/error.h"

namespace fm::tune {

const char* verdict_name(Verdict v) {
  switch (v) {
    case Verdict::Base:
      return "base";
    case Verdict::Kept:
      return "kept";
    case Verdict::Discarded:
      return "discarded";
    case Verdict::Failed:
      return "failed";
    case Verdict::Confirm:
      return "confirm";
  }
  return "?";
}

namespace {

// A TSV field: tabs and line breaks would break the row.
std::string field(std::string s) {
  for (char& c : s)
    if (c == '\t' || c == '\n' || c == '\r') c = ' ';
  return s;
}

void write_atomic(const std::filesystem::path& path, const std::string& bytes) {
  AtomicFile out(path);
  out.write(bytes.data(), bytes.size());
  out.commit();
}

}  // namespace

std::string results_tsv(const std::vector<Trial>& trials) {
  std::string out =
      "trial\tsetting\tdecode_tok_s\tprefill_tok_s\tkl_mean\tppl\tverdict\treason\tchange\tkl_max\ttop1_"
      "agree\t"
      "identical\tio_wait_ms\tcache_hit\tseconds\n";
  for (const Trial& t : trials) {
    const bool measured = t.verdict != Verdict::Failed;
    out += fmt::format(
        "{}\t{}\t{:.3f}\t{:.3f}\t{:.3g}\t{:.4f}\t{}\t{}\t{}\t{:.3g}\t{:.4f}\t{}\t{:.3f}\t{:.3f}\t{:.2f}\n",
        t.index, field(describe(t.setting)), measured ? t.decode_tok_s : 0.0,
        measured ? t.prefill_tok_s : 0.0, t.kl_mean, t.ppl, verdict_name(t.verdict), field(t.reason),
        field(t.change), t.kl_max, t.top1_agree, t.identical ? "yes" : "no", t.io_wait_ms, t.cache_hit,
        t.seconds);
  }
  return out;
}

void write_results_tsv(const std::filesystem::path& path, const std::vector<Trial>& trials) {
  write_atomic(path, results_tsv(trials));
}

// --- the plot ---------------------------------------------------------------------------------------

namespace {

// Tick positions over [lo, hi]: a step of 1, 2 or 5 times a power of ten giving about `target` ticks.
std::vector<double> ticks(double lo, double hi, int target) {
  const double raw = (hi - lo) / std::max(target, 1);
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  double step = mag;
  for (double m : {1.0, 2.0, 5.0, 10.0})
    if (m * mag >= raw) {
      step = m * mag;
      break;
    }
  std::vector<double> out;
  for (double v = std::ceil(lo / step) * step; v <= hi + step * 1e-9; v += step)
    out.push_back(std::fabs(v) < step * 1e-9 ? 0.0 : v);
  return out;
}

std::string tick_label(double v, double step) {
  const int decimals = step >= 1 ? 0 : int(std::ceil(-std::log10(step) - 1e-9));
  return fmt::format("{:.{}f}", v, std::max(decimals, 0));
}

cairo_status_t append_png(void* closure, const unsigned char* data, unsigned int length) {
  static_cast<std::string*>(closure)->append(reinterpret_cast<const char*>(data), length);
  return CAIRO_STATUS_SUCCESS;
}

enum class Marker { Kept, Slower, Quality, Confirm };

void draw_marker(cairo_t* cr, double x, double y, Marker m) {
  const double r = 5;
  cairo_new_path(cr);
  switch (m) {
    case Marker::Kept:
      cairo_set_source_rgb(cr, 0.13, 0.55, 0.13);
      cairo_arc(cr, x, y, r, 0, 2 * M_PI);
      cairo_fill(cr);
      break;
    case Marker::Slower:
      cairo_set_source_rgb(cr, 0.45, 0.45, 0.45);
      cairo_set_line_width(cr, 1.5);
      cairo_arc(cr, x, y, r, 0, 2 * M_PI);
      cairo_stroke(cr);
      break;
    case Marker::Quality:
      cairo_set_source_rgb(cr, 0.8, 0.1, 0.1);
      cairo_set_line_width(cr, 2);
      cairo_move_to(cr, x - r, y - r);
      cairo_line_to(cr, x + r, y + r);
      cairo_move_to(cr, x - r, y + r);
      cairo_line_to(cr, x + r, y - r);
      cairo_stroke(cr);
      break;
    case Marker::Confirm:
      cairo_set_source_rgb(cr, 0.1, 0.3, 0.8);
      cairo_set_line_width(cr, 1.5);
      cairo_rectangle(cr, x - r, y - r, 2 * r, 2 * r);
      cairo_stroke(cr);
      break;
  }
}

Marker marker_of(const Trial& t) {
  if (t.verdict == Verdict::Confirm) return Marker::Confirm;
  if (t.verdict == Verdict::Base || t.verdict == Verdict::Kept) return Marker::Kept;
  return t.quality_failed() ? Marker::Quality : Marker::Slower;
}

void text_at(cairo_t* cr, double x, double y, const std::string& s, double align_x, double align_y) {
  cairo_text_extents_t e;
  cairo_text_extents(cr, s.c_str(), &e);
  cairo_move_to(cr, x - e.width * align_x - e.x_bearing, y - e.height * align_y - e.y_bearing);
  cairo_show_text(cr, s.c_str());
}

}  // namespace

void write_plot_png(const std::filesystem::path& path, const std::vector<Trial>& trials,
                    const PlotOptions& o) {
  std::vector<const Trial*> shown;
  for (const Trial& t : trials)
    if (t.verdict != Verdict::Failed && std::isfinite(t.ppl) && t.ppl > 0) shown.push_back(&t);

  double x_lo = 1e300, x_hi = -1e300, y_hi = 0;
  for (const Trial* t : shown) {
    x_lo = std::min(x_lo, t->ppl);
    x_hi = std::max(x_hi, t->ppl);
    y_hi = std::max(y_hi, t->decode_tok_s);
  }
  if (shown.empty()) x_lo = 1, x_hi = 2;
  const double pad = std::max((x_hi - x_lo) * 0.08, std::max(std::fabs(x_hi) * 0.005, 1e-6));
  x_lo -= pad;
  x_hi += pad;
  y_hi = y_hi > 0 ? y_hi * 1.12 : 1.0;

  cairo_surface_t* surface = cairo_image_surface_create(CAIRO_FORMAT_RGB24, o.width, o.height);
  cairo_t* cr = cairo_create(surface);
  cairo_set_source_rgb(cr, 1, 1, 1);
  cairo_paint(cr);
  cairo_select_font_face(cr, "sans-serif", CAIRO_FONT_SLANT_NORMAL, CAIRO_FONT_WEIGHT_NORMAL);

  const double left = 80, right = o.width - 200, top = 50, bottom = o.height - 60;
  auto px = [&](double v) { return left + (v - x_lo) / (x_hi - x_lo) * (right - left); };
  auto py = [&](double v) { return bottom - v / y_hi * (bottom - top); };

  // Grid, ticks and their labels.
  cairo_set_font_size(cr, 11);
  const std::vector<double> xt = ticks(x_lo, x_hi, 6), yt = ticks(0, y_hi, 6);
  const double xstep = xt.size() > 1 ? xt[1] - xt[0] : 1, ystep = yt.size() > 1 ? yt[1] - yt[0] : 1;
  cairo_set_line_width(cr, 1);
  for (double v : xt) {
    cairo_set_source_rgb(cr, 0.9, 0.9, 0.9);
    cairo_move_to(cr, px(v), top);
    cairo_line_to(cr, px(v), bottom);
    cairo_stroke(cr);
    cairo_set_source_rgb(cr, 0, 0, 0);
    text_at(cr, px(v), bottom + 8, tick_label(v, xstep), 0.5, 0);
  }
  for (double v : yt) {
    cairo_set_source_rgb(cr, 0.9, 0.9, 0.9);
    cairo_move_to(cr, left, py(v));
    cairo_line_to(cr, right, py(v));
    cairo_stroke(cr);
    cairo_set_source_rgb(cr, 0, 0, 0);
    text_at(cr, left - 8, py(v), tick_label(v, ystep), 1, 0.5);
  }
  cairo_set_source_rgb(cr, 0, 0, 0);
  cairo_rectangle(cr, left, top, right - left, bottom - top);
  cairo_stroke(cr);

  // Axis labels and title.
  cairo_set_font_size(cr, 13);
  text_at(cr, (left + right) / 2, o.height - 22, "perplexity on the evaluation text (lower is better)", 0.5,
          0);
  cairo_save(cr);
  cairo_translate(cr, 22, (top + bottom) / 2);
  cairo_rotate(cr, -M_PI / 2);
  text_at(cr, 0, 0, "decode tok/s (higher is better)", 0.5, 0.5);
  cairo_restore(cr);
  cairo_set_font_size(cr, 15);
  text_at(cr, (left + right) / 2, 20, o.title, 0.5, 0);

  // The base's perplexity as a dashed line.
  if (o.base >= 0 && o.base < int(trials.size()) && trials[size_t(o.base)].ppl > 0) {
    const double dashes[] = {4, 4};
    cairo_set_dash(cr, dashes, 2, 0);
    cairo_set_source_rgb(cr, 0.5, 0.5, 0.5);
    cairo_move_to(cr, px(trials[size_t(o.base)].ppl), top);
    cairo_line_to(cr, px(trials[size_t(o.base)].ppl), bottom);
    cairo_stroke(cr);
    cairo_set_dash(cr, nullptr, 0, 0);
  }

  for (const Trial* t : shown) draw_marker(cr, px(t->ppl), py(t->decode_tok_s), marker_of(*t));
  cairo_set_font_size(cr, 11);
  auto annotate = [&](int i, const char* what) {
    if (i < 0 || i >= int(trials.size()) || trials[size_t(i)].verdict == Verdict::Failed) return;
    const Trial& t = trials[size_t(i)];
    cairo_set_source_rgb(cr, 0, 0, 0);
    cairo_set_line_width(cr, 1.5);
    cairo_new_path(cr);
    cairo_arc(cr, px(t.ppl), py(t.decode_tok_s), 9, 0, 2 * M_PI);
    cairo_stroke(cr);
    text_at(cr, px(t.ppl) + 12, py(t.decode_tok_s) - 12, fmt::format("{} (#{})", what, t.index), 0, 0.5);
  };
  annotate(o.base, "base");
  if (o.best != o.base) annotate(o.best, "best");

  // Legend.
  const struct {
    Marker m;
    const char* text;
  } legend[] = {{Marker::Kept, "base / kept"},
                {Marker::Slower, "discarded: not faster"},
                {Marker::Quality, "discarded: quality gate"},
                {Marker::Confirm, "confirmation re-run"}};
  double ly = top + 10;
  for (const auto& l : legend) {
    draw_marker(cr, right + 20, ly, l.m);
    cairo_set_source_rgb(cr, 0, 0, 0);
    text_at(cr, right + 32, ly, l.text, 0, 0.5);
    ly += 22;
  }
  cairo_set_source_rgb(cr, 0.4, 0.4, 0.4);
  text_at(cr, right + 14, ly + 4, fmt::format("{} trials", trials.size()), 0, 0.5);

  std::string png;
  cairo_surface_flush(surface);
  const cairo_status_t status = cairo_surface_write_to_png_stream(surface, append_png, &png);
  const cairo_status_t draw_status = cairo_status(cr);
  cairo_destroy(cr);
  cairo_surface_destroy(surface);
  if (draw_status != CAIRO_STATUS_SUCCESS)
    fail("{}: drawing the plot failed: {}", path.string(), cairo_status_to_string(draw_status));
  if (status != CAIRO_STATUS_SUCCESS)
    fail("{}: encoding the PNG failed: {}", path.string(), cairo_status_to_string(status));
  write_atomic(path, png);
}

}  // namespace fm::tune
