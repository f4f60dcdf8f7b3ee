//! Per-epoch training metrics: a CSV log that survives restarts, and a PNG plot of
//! the loss and accuracy curves.
//!
//! The plot's text (titles, axis labels, tick labels, legend) needs a TrueType
//! font at run time: the first readable file among `$SPARSENET_FONT` and the
//! usual DejaVu Sans locations (Debian/Ubuntu package `fonts-dejavu-core`:
//! `/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf`). Without one, the curves
//! and axes are still drawn, without any text.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::prelude::*;

use crate::files::{excerpt, write_atomically};

/// Size of the PNG written by [`MetricsLog::plot_png`].
pub const PLOT_SIZE: (u32, u32) = (1000, 400);

/// Environment variable naming a TrueType font file for plot text (tried first).
pub const FONT_ENV: &str = "SPARSENET_FONT";

/// Where the plot's font is looked for after [`FONT_ENV`].
pub const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", // Debian, Ubuntu
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf", // Fedora
    "/usr/share/fonts/TTF/DejaVuSans.ttf",             // Arch
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",          // Alpine, older Fedora
    "/usr/local/share/fonts/DejaVuSans.ttf",
    "/Library/Fonts/DejaVuSans.ttf",
];

/// The CSV header written by [`MetricsLog::write_csv`].
pub const CSV_HEADER: &str =
    "epoch,step,lr,train_loss,train_acc,test_loss,test_acc,images_per_sec,elapsed_sec";

/// Metrics of one epoch. Accuracies are fractions in `[0, 1]`.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub struct EpochRecord {
    /// Epoch number (1 for the first completed epoch).
    pub epoch: u64,
    /// Global step at the end of the epoch.
    pub step: u64,
    /// Learning rate at the end of the epoch.
    pub lr: f64,
    /// Mean training loss over the epoch.
    pub train_loss: f64,
    /// Training accuracy over the epoch, in `[0, 1]`.
    pub train_acc: f64,
    /// Test loss after the epoch.
    pub test_loss: f64,
    /// Test accuracy after the epoch, in `[0, 1]`.
    pub test_acc: f64,
    /// Training throughput over the epoch.
    pub images_per_sec: f64,
    /// Wall-clock seconds since the start of the run (over all resumptions).
    pub elapsed_sec: f64,
}

/// Errors of reading, writing and plotting a metrics log; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The file could not be read.
    #[error("cannot read metrics file {}: {source}", .path.display())]
    Read {
        /// The metrics file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file could not be written.
    #[error("cannot write metrics file {}: {source}", .path.display())]
    Write {
        /// The metrics file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A line of the CSV file is malformed.
    #[error("metrics file {}, line {line}: {reason}", .path.display())]
    Parse {
        /// The metrics file.
        path: PathBuf,
        /// The line (1-based).
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// The plot could not be drawn or encoded.
    #[error("cannot plot metrics to {}: {reason}", .path.display())]
    Plot {
        /// The PNG file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// The metrics of a run, one record per epoch.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MetricsLog {
    records: Vec<EpochRecord>,
}

impl MetricsLog {
    /// An empty log.
    pub fn new() -> MetricsLog {
        MetricsLog::default()
    }

    /// Appends one epoch's record.
    pub fn push(&mut self, record: EpochRecord) {
        self.records.push(record);
    }

    /// The records, in the order they were pushed.
    pub fn records(&self) -> &[EpochRecord] {
        &self.records
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether there are no records.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Drops the records of epochs after `epoch`: when a run resumes from a
    /// checkpoint of `epoch` completed epochs, rows logged after that checkpoint
    /// are re-done.
    pub fn truncate_after_epoch(&mut self, epoch: u64) {
        self.records.retain(|r| r.epoch <= epoch);
    }

    /// The CSV text: a header line and one row per record. Numbers are written
    /// so that [`MetricsLog::read_csv`] reads them back exactly.
    pub fn to_csv(&self) -> String {
        let mut s = String::with_capacity(100 * (self.records.len() + 1));
        s.push_str(CSV_HEADER);
        s.push('\n');
        for r in &self.records {
            let _ = writeln!(
                s,
                "{},{},{},{},{},{},{},{},{}",
                r.epoch,
                r.step,
                r.lr,
                r.train_loss,
                r.train_acc,
                r.test_loss,
                r.test_acc,
                r.images_per_sec,
                r.elapsed_sec
            );
        }
        s
    }

    /// Writes the whole log to `path` as CSV, atomically (the file holds the old
    /// or the new log, never a mix); call after every epoch.
    pub fn write_csv(&self, path: &Path) -> Result<(), MetricsError> {
        write_atomically(path, self.to_csv().as_bytes()).map_err(|source| MetricsError::Write {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Reads a log written by [`MetricsLog::write_csv`].
    pub fn read_csv(path: &Path) -> Result<MetricsLog, MetricsError> {
        let text = std::fs::read_to_string(path).map_err(|source| MetricsError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        MetricsLog::from_csv(&text, path)
    }

    /// Parses CSV text; `origin` is used in error messages.
    pub fn from_csv(text: &str, origin: &Path) -> Result<MetricsLog, MetricsError> {
        let err = |line: usize, reason: String| MetricsError::Parse {
            path: origin.to_path_buf(),
            line,
            reason,
        };
        let mut lines = text.lines().enumerate();
        let header = lines
            .next()
            .map(|(_, l)| l.trim_start_matches('\u{feff}').trim())
            .unwrap_or("");
        if header != CSV_HEADER {
            return Err(err(
                1,
                format!(
                    "expected the header `{CSV_HEADER}`, found `{}`",
                    excerpt(header)
                ),
            ));
        }
        let mut records = Vec::new();
        for (i, line) in lines {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let n = i + 1;
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            if fields.len() != 9 {
                return Err(err(
                    n,
                    format!("expected 9 comma-separated fields, found {}", fields.len()),
                ));
            }
            let names: Vec<&str> = CSV_HEADER.split(',').collect();
            let int = |k: usize| {
                fields[k].parse::<u64>().map_err(|_| {
                    err(
                        n,
                        format!(
                            "expected `{}` to be a non-negative integer, found `{}`",
                            names[k],
                            excerpt(fields[k])
                        ),
                    )
                })
            };
            let float = |k: usize| {
                fields[k].parse::<f64>().map_err(|_| {
                    err(
                        n,
                        format!(
                            "expected `{}` to be a number, found `{}`",
                            names[k],
                            excerpt(fields[k])
                        ),
                    )
                })
            };
            records.push(EpochRecord {
                epoch: int(0)?,
                step: int(1)?,
                lr: float(2)?,
                train_loss: float(3)?,
                train_acc: float(4)?,
                test_loss: float(5)?,
                test_acc: float(6)?,
                images_per_sec: float(7)?,
                elapsed_sec: float(8)?,
            });
        }
        Ok(MetricsLog { records })
    }

    /// Plots the log to a 1000x400 PNG at `path`, atomically: train and test
    /// loss against epoch on the left, train and test accuracy (in %) on the
    /// right, with `title` in the panel captions. Text needs a font (see the
    /// module documentation); without one the plot has curves and axes only.
    pub fn plot_png(&self, path: &Path, title: &str) -> Result<(), MetricsError> {
        let png =
            self.render_png(title, font_available())
                .map_err(|reason| MetricsError::Plot {
                    path: path.to_path_buf(),
                    reason,
                })?;
        write_atomically(path, &png).map_err(|source| MetricsError::Write {
            path: path.to_path_buf(),
            source,
        })
    }

    /// The PNG bytes of the plot, with or without text.
    fn render_png(&self, title: &str, with_text: bool) -> Result<Vec<u8>, String> {
        let (w, h) = PLOT_SIZE;
        let mut rgb = vec![0u8; w as usize * h as usize * 3];
        {
            let root = BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area();
            root.fill(&WHITE).map_err(|e| e.to_string())?;
            let (left, right) = root.split_horizontally(w / 2);
            let epochs: Vec<f64> = self.records.iter().map(|r| r.epoch as f64).collect();
            let caption = |what: &str| {
                if title.is_empty() {
                    what.to_string()
                } else {
                    format!("{title} – {what}")
                }
            };
            let loss = Panel {
                caption: caption("loss"),
                y_desc: "cross-entropy loss",
                x: &epochs,
                train: self.records.iter().map(|r| r.train_loss).collect(),
                test: self.records.iter().map(|r| r.test_loss).collect(),
                zero_based: true,
                cap: None,
                best_is_max: false,
                unit: "",
                decimals: 4,
                legend_pos: SeriesLabelPosition::UpperRight,
            };
            let acc = Panel {
                caption: caption("accuracy"),
                y_desc: "accuracy (%)",
                x: &epochs,
                train: self.records.iter().map(|r| 100.0 * r.train_acc).collect(),
                test: self.records.iter().map(|r| 100.0 * r.test_acc).collect(),
                zero_based: false,
                cap: Some(100.0),
                best_is_max: true,
                unit: "%",
                decimals: 2,
                legend_pos: SeriesLabelPosition::LowerRight,
            };
            loss.draw(&left, with_text)?;
            acc.draw(&right, with_text)?;
            root.present().map_err(|e| e.to_string())?;
        }
        let mut png = Vec::new();
        image::ImageEncoder::write_image(
            image::codecs::png::PngEncoder::new(&mut png),
            &rgb,
            w,
            h,
            image::ExtendedColorType::Rgb8,
        )
        .map_err(|e| format!("PNG encoding failed: {e}"))?;
        Ok(png)
    }
}

/// Registers a font for plotters' text once per process; whether one was found.
fn font_available() -> bool {
    static FOUND: OnceLock<bool> = OnceLock::new();
    *FOUND.get_or_init(|| {
        let env = std::env::var_os(FONT_ENV).map(PathBuf::from);
        let candidates = env.into_iter().chain(FONT_PATHS.iter().map(PathBuf::from));
        for path in candidates {
            if let Ok(bytes) = std::fs::read(&path) {
                // plotters keeps a `&'static` reference to the font data: keep the
                // bytes for the life of the process (once).
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

const TRAIN_COLOR: RGBColor = RGBColor(31, 119, 180);
const TEST_COLOR: RGBColor = RGBColor(214, 39, 40);

/// One panel of the plot: two curves against the epoch.
struct Panel<'a> {
    caption: String,
    y_desc: &'static str,
    x: &'a [f64],
    train: Vec<f64>,
    test: Vec<f64>,
    /// Start the y axis at 0.
    zero_based: bool,
    /// Upper limit of the y axis, if any.
    cap: Option<f64>,
    /// Whether the best test value is the largest (accuracy) or smallest (loss).
    best_is_max: bool,
    unit: &'static str,
    /// Decimals of the best test value in the legend.
    decimals: usize,
    legend_pos: SeriesLabelPosition,
}

impl Panel<'_> {
    fn draw<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, plotters::coord::Shift>,
        with_text: bool,
    ) -> Result<(), String>
    where
        DB::ErrorType: 'static,
    {
        let err = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
        let (x0, x1) = padded_range(self.x.iter().copied(), false, None, 1.0);
        let (y0, y1) = padded_range(
            self.train.iter().chain(&self.test).copied(),
            self.zero_based,
            self.cap,
            0.0,
        );
        let mut builder = ChartBuilder::on(area);
        builder.margin(12);
        if with_text {
            builder
                .caption(&self.caption, ("sans-serif", 20))
                .x_label_area_size(40)
                .y_label_area_size(60);
        } else {
            builder.x_label_area_size(8).y_label_area_size(8);
        }
        let mut chart = builder.build_cartesian_2d(x0..x1, y0..y1).map_err(err)?;
        let mut mesh = chart.configure_mesh();
        mesh.light_line_style(WHITE.mix(0.0));
        if with_text {
            mesh.x_desc("epoch")
                .x_label_formatter(&|x| {
                    if x.fract() == 0.0 {
                        format!("{x:.0}")
                    } else {
                        format!("{x:.1}")
                    }
                })
                .y_desc(self.y_desc)
                .x_labels(10)
                .y_labels(8)
                .label_style(("sans-serif", 14))
                .axis_desc_style(("sans-serif", 15));
        } else {
            mesh.x_labels(0).y_labels(0);
        }
        mesh.draw().map_err(err)?;

        let best = best_point(self.x, &self.test, self.best_is_max);
        let series = [
            ("train".to_string(), &self.train, TRAIN_COLOR),
            (
                match best {
                    Some((e, v)) => {
                        let which = if self.best_is_max { "best" } else { "min" };
                        format!(
                            "test ({which} {v:.prec$}{} @ epoch {e})",
                            self.unit,
                            prec = self.decimals
                        )
                    }
                    None => "test".to_string(),
                },
                &self.test,
                TEST_COLOR,
            ),
        ];
        for (label, ys, color) in series {
            let points: Vec<(f64, f64)> = self
                .x
                .iter()
                .zip(ys.iter())
                .map(|(&x, &y)| (x, y))
                .filter(|(_, y)| y.is_finite())
                .collect();
            let anno = chart
                .draw_series(LineSeries::new(
                    points.iter().copied(),
                    color.stroke_width(2),
                ))
                .map_err(err)?;
            if with_text {
                anno.label(label).legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            }
            if points.len() <= 40 {
                chart
                    .draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))
                    .map_err(err)?;
            }
        }
        if with_text {
            chart
                .configure_series_labels()
                .position(self.legend_pos.clone())
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK.mix(0.5))
                .label_font(("sans-serif", 14))
                .draw()
                .map_err(err)?;
        }
        Ok(())
    }
}

/// The (epoch, value) of the best finite value.
fn best_point(x: &[f64], ys: &[f64], max: bool) -> Option<(f64, f64)> {
    x.iter()
        .zip(ys)
        .filter(|(_, y)| y.is_finite())
        .map(|(&x, &y)| (x, y))
        .reduce(|a, b| {
            let better = if max { b.1 > a.1 } else { b.1 < a.1 };
            if better {
                b
            } else {
                a
            }
        })
}

/// An axis range covering the finite `values` with 5% padding (`min_pad` at
/// least), starting at 0 when `zero_based`, limited above by `cap`; `0..1` when
/// there are no finite values.
fn padded_range(
    values: impl Iterator<Item = f64>,
    zero_based: bool,
    cap: Option<f64>,
    min_pad: f64,
) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if lo > hi {
        return (0.0, cap.unwrap_or(1.0).min(1.0));
    }
    if zero_based {
        lo = lo.min(0.0);
    }
    let pad = ((hi - lo) * 0.05)
        .max(min_pad)
        .max(1e-9 * hi.abs().max(1.0));
    let mut a = if zero_based && lo >= 0.0 {
        lo
    } else {
        lo - pad
    };
    let mut b = hi + pad;
    if let Some(c) = cap {
        if hi <= c {
            b = b.min(c);
        }
        if zero_based || lo >= 0.0 {
            a = a.max(0.0);
        }
    }
    if b <= a {
        b = a + 1.0;
    }
    if a == b {
        a -= 1.0;
    }
    (a, b)
}

/// A short name for a dataset's origin, for plot captions: the folder that
/// holds a dataset's files (`fashion-mnist` for
/// `/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz`), or an
/// archive's or folder's own name without extensions.
pub(crate) fn dataset_label(source: &Path) -> String {
    let name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned());
    let own = name(source).unwrap_or_default();
    let archive = [".tar.gz", ".tgz", ".tar", ".zip"]
        .iter()
        .find_map(|ext| own.strip_suffix(ext));
    if let Some(stem) = archive {
        return stem.to_string();
    }
    if source.is_dir() {
        return own;
    }
    source.parent().and_then(name).unwrap_or(own)
}

/// Trains `M` on `train`, evaluating on `test` after every epoch. Writes
/// `checkpoint.safetensors` (weights, running statistics, optimiser state,
/// progress), `metrics.csv` and `metrics.png` into `cfg.out_dir` each epoch.

#[cfg(test)]
mod tests {
    use super::*;

    /// A plausible 30-epoch run.
    fn sample_log(n: u64) -> MetricsLog {
        let mut log = MetricsLog::new();
        for e in 1..=n {
            let t = e as f64;
            let drop = if e > n / 2 { 0.5 } else { 0.0 };
            log.push(EpochRecord {
                epoch: e,
                step: e * 782,
                lr: if e > n / 2 { 0.01 } else { 0.1 },
                train_loss: 2.0 / (1.0 + 0.3 * t) - drop * 0.3,
                train_acc: 1.0 - 0.8 / (1.0 + 0.25 * t) + drop * 0.05,
                test_loss: 2.1 / (1.0 + 0.25 * t) - drop * 0.2 + 0.05 * (t * 1.7).sin(),
                test_acc: 1.0 - 0.85 / (1.0 + 0.2 * t) + drop * 0.04 + 0.01 * (t * 2.3).sin(),
                images_per_sec: 1234.5 + t,
                elapsed_sec: 40.25 * t,
            });
        }
        log
    }

    #[test]
    fn csv_round_trip_is_exact() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.csv");
        let mut log = sample_log(30);
        log.push(EpochRecord {
            epoch: 31,
            step: u64::MAX,
            lr: 1e-300,
            train_loss: f64::NAN,
            train_acc: 0.1 + 0.2,
            test_loss: f64::INFINITY,
            test_acc: -0.0,
            images_per_sec: f64::MIN_POSITIVE / 3.0,
            elapsed_sec: 1.5e300,
        });
        log.write_csv(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with(&format!("{CSV_HEADER}\n1,782,0.1,")),
            "{text}"
        );
        assert_eq!(text.lines().count(), 32);
        let back = MetricsLog::read_csv(&path).unwrap();
        assert_eq!(back.len(), 31);
        for (a, b) in log.records().iter().zip(back.records()) {
            assert_eq!((a.epoch, a.step), (b.epoch, b.step));
            let fa = [
                a.lr,
                a.train_loss,
                a.train_acc,
                a.test_loss,
                a.test_acc,
                a.images_per_sec,
                a.elapsed_sec,
            ];
            let fb = [
                b.lr,
                b.train_loss,
                b.train_acc,
                b.test_loss,
                b.test_acc,
                b.images_per_sec,
                b.elapsed_sec,
            ];
            for (x, y) in fa.iter().zip(&fb) {
                assert!(
                    x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()),
                    "{x} vs {y}"
                );
            }
        }
        // Resume: keep the first 20 epochs, continue, rewrite.
        let mut resumed = MetricsLog::read_csv(&path).unwrap();
        resumed.truncate_after_epoch(20);
        assert_eq!(resumed.len(), 20);
        resumed.push(log.records()[20]);
        resumed.write_csv(&path).unwrap();
        let again = MetricsLog::read_csv(&path).unwrap();
        assert_eq!(again.records(), &log.records()[..21]);
        // Only the CSV in the directory (no temporary files left).
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        // An empty log is just the header.
        MetricsLog::new().write_csv(&path).unwrap();
        assert!(MetricsLog::read_csv(&path).unwrap().is_empty());
    }

    #[test]
    fn csv_errors_name_file_and_line() {
        let p = Path::new("run/metrics.csv");
        let e = MetricsLog::from_csv("", p).unwrap_err();
        assert!(
            e.to_string().contains("run/metrics.csv") && e.to_string().contains("line 1"),
            "{e}"
        );
        let e = MetricsLog::from_csv("epoch,loss\n", p).unwrap_err();
        assert!(e.to_string().contains("expected the header"), "{e}");
        let good = sample_log(2).to_csv();
        let bad = format!("{good}3,100,0.1,1,1,1,1,1\n");
        let e = MetricsLog::from_csv(&bad, p).unwrap_err();
        assert!(
            e.to_string().contains("line 4") && e.to_string().contains("found 8"),
            "{e}"
        );
        let bad = format!("{good}3,-1,0.1,1,1,1,1,1,1\n");
        let e = MetricsLog::from_csv(&bad, p).unwrap_err();
        assert!(
            e.to_string().contains("`step`") && e.to_string().contains("`-1`"),
            "{e}"
        );
        let bad = format!("{good}3,1,0.1,x,1,1,1,1,1\n");
        let e = MetricsLog::from_csv(&bad, p).unwrap_err();
        assert!(e.to_string().contains("`train_loss`"), "{e}");
        // CRLF line ends and a blank last line are fine.
        let crlf = good.replace('\n', "\r\n") + "\r\n";
        assert_eq!(MetricsLog::from_csv(&crlf, p).unwrap(), sample_log(2));
        let e = MetricsLog::read_csv(Path::new("/nonexistent/metrics.csv")).unwrap_err();
        assert!(
            matches!(e, MetricsError::Read { .. })
                && e.to_string().contains("/nonexistent/metrics.csv"),
            "{e}"
        );
    }

    fn decode(bytes: &[u8]) -> image::RgbImage {
        image::load_from_memory_with_format(bytes, image::ImageFormat::Png)
            .unwrap()
            .to_rgb8()
    }

    fn count_color(img: &image::RgbImage, c: RGBColor, x_range: std::ops::Range<u32>) -> usize {
        img.enumerate_pixels()
            .filter(|(x, _, p)| x_range.contains(x) && p.0 == [c.0, c.1, c.2])
            .count()
    }

    #[test]
    fn png_is_written_and_decodes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("curves.png");
        let log = sample_log(30);
        log.plot_png(&path, "SparseNet-BC (L=40, k=24) on CIFAR-10")
            .unwrap();
        let img = decode(&std::fs::read(&path).unwrap());
        assert_eq!(img.dimensions(), PLOT_SIZE);
        // Both curves in both panels.
        for half in [0..500, 500..1000] {
            assert!(
                count_color(&img, TRAIN_COLOR, half.clone()) > 200,
                "train curve in {half:?}"
            );
            assert!(
                count_color(&img, TEST_COLOR, half.clone()) > 200,
                "test curve in {half:?}"
            );
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        // Keep a copy for inspection when asked to.
        if let Some(out) = std::env::var_os("SPARSENET_PLOT_OUT") {
            std::fs::copy(&path, out).unwrap();
        }
    }

    #[test]
    fn png_without_font_still_has_curves() {
        let log = sample_log(12);
        let img = decode(&log.render_png("t", false).unwrap());
        assert_eq!(img.dimensions(), PLOT_SIZE);
        for half in [0..500, 500..1000] {
            assert!(count_color(&img, TRAIN_COLOR, half.clone()) > 100);
            assert!(count_color(&img, TEST_COLOR, half.clone()) > 100);
        }
        if let Some(out) = std::env::var_os("SPARSENET_PLOT_OUT_NOFONT") {
            std::fs::write(out, log.render_png("t", false).unwrap()).unwrap();
        }
    }

    #[test]
    fn png_edge_cases() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.png");
        for text in [true, false] {
            // Empty, a single epoch, constant values, non-finite values.
            let mut logs = vec![MetricsLog::new(), sample_log(1)];
            let mut flat = MetricsLog::new();
            for e in 1..5 {
                flat.push(EpochRecord {
                    epoch: e,
                    train_acc: 1.0,
                    test_acc: 1.0,
                    ..Default::default()
                });
            }
            logs.push(flat);
            let mut diverged = sample_log(6);
            diverged.push(EpochRecord {
                epoch: 7,
                train_loss: f64::NAN,
                test_loss: f64::INFINITY,
                ..Default::default()
            });
            logs.push(diverged);
            for log in &logs {
                let img = decode(&log.render_png("", text && font_available()).unwrap());
                assert_eq!(img.dimensions(), PLOT_SIZE);
            }
        }
        sample_log(3).plot_png(&path, "").unwrap();
        let e = sample_log(3)
            .plot_png(&dir.path().join("no/such/dir/p.png"), "")
            .unwrap_err();
        assert!(e.to_string().contains("no/such/dir/p.png"), "{e}");
    }

    #[test]
    fn ranges() {
        assert_eq!(padded_range([].into_iter(), true, None, 0.0), (0.0, 1.0));
        let (a, b) = padded_range([0.5, 2.0].into_iter(), true, None, 0.0);
        assert_eq!(a, 0.0);
        assert!(b > 2.0 && b < 2.2);
        let (a, b) = padded_range([90.0, 100.0].into_iter(), false, Some(100.0), 0.0);
        assert!(a < 90.0 && a > 89.0 && b == 100.0);
        let (a, b) = padded_range([3.0].into_iter(), false, None, 1.0);
        assert_eq!((a, b), (2.0, 4.0));
        let (a, b) = padded_range([0.0, 0.0].into_iter(), true, None, 0.0);
        assert!(a == 0.0 && b > 0.0);
    }

    /// A corrupt metrics file whose first line is a megabyte of text (or
    /// holds terminal escape sequences) gives a short error, not the line.
    #[test]
    fn a_long_or_binary_line_is_shown_as_an_excerpt() {
        let text = format!("{}\n", "x".repeat(1 << 20));
        let e = MetricsLog::from_csv(&text, Path::new("m.csv"))
            .unwrap_err()
            .to_string();
        assert!(e.len() < 400, "{} bytes: {}", e.len(), &e[..400]);
        assert!(e.contains("m.csv") && e.contains("more bytes"), "{e}");
        let text = format!("{CSV_HEADER}\n1,2,\u{1b}[2J,4,5,6,7,8,9\n");
        let e = MetricsLog::from_csv(&text, Path::new("m.csv"))
            .unwrap_err()
            .to_string();
        assert!(!e.contains('\u{1b}') && e.contains("\\u{1b}[2J"), "{e}");
    }

    #[test]
    fn plots_name_the_folder_of_a_file_or_an_archive_without_extension() {
        let label = |p: &str| super::dataset_label(Path::new(p));
        assert_eq!(
            label("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"),
            "fashion-mnist"
        );
        assert_eq!(label("shared/data/cifar10-jpeg.tar.gz"), "cifar10-jpeg");
        assert_eq!(label("in-memory"), "in-memory");
        let dir = std::env::temp_dir();
        assert_eq!(
            label(dir.to_str().unwrap()),
            dir.file_name().unwrap().to_string_lossy()
        );
    }
}
