//! A Keras-style `summary()` table rendered from the plan at compile time.

use crate::config::Config;
use crate::plan::{Plan, Store};

fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// Abbreviates source names relative to the stage of the newest source:
/// `u3` for unit 3 of that stage, the full name otherwise.
fn short_sources(sources: &[String]) -> String {
    let stage_prefix = sources
        .first()
        .and_then(|s| s.rsplit_once(".units."))
        .map(|(p, _)| format!("{p}.units."));
    let names: Vec<String> = sources
        .iter()
        .map(|s| match &stage_prefix {
            Some(p) if s.starts_with(p.as_str()) => format!("u{}", &s[p.len()..]),
            _ => s.clone(),
        })
        .collect();
    if names.len() > 6 {
        format!("{} +{} more", names[..5].join(" "), names.len() - 5)
    } else {
        names.join(" ")
    }
}

pub fn render(cfg: &Config, plan: &Plan) -> String {
    let mut rows = vec![[
        "Layer".to_string(),
        "Op".to_string(),
        "Reads (newest first)".to_string(),
        "In".to_string(),
        "Out shape".to_string(),
        "Params".to_string(),
        "MACs".to_string(),
    ]];
    for l in &plan.layers {
        rows.push([
            l.name.clone(),
            l.op.clone(),
            short_sources(&l.sources),
            l.in_channels.to_string(),
            if l.name == "head" {
                format!("{}", l.out_channels)
            } else {
                format!("{}x{}x{}", l.out_channels, l.out_size.0, l.out_size.1)
            },
            group(l.params as u64),
            group(l.macs),
        ]);
    }
    let mut width = [0usize; 7];
    for r in &rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let total: usize = width.iter().sum::<usize>() + 2 * 6;
    let mut out = String::new();
    let [c, h, w] = plan.input;
    out += &format!(
        "Model: {} (style {}, aggregation {}, input {c}x{h}x{w}, {} classes)\n",
        cfg.ident,
        cfg.style.name(),
        cfg.aggregation.describe(),
        plan.classes
    );
    out += &"=".repeat(total);
    out.push('\n');
    for (i, r) in rows.iter().enumerate() {
        let mut line = String::new();
        for (j, cell) in r.iter().enumerate() {
            let pad = width[j] - cell.chars().count();
            if j >= 3 {
                line += &" ".repeat(pad);
                line += cell;
            } else {
                line += cell;
                line += &" ".repeat(pad);
            }
            if j < 6 {
                line += "  ";
            }
        }
        out += line.trim_end();
        out.push('\n');
        if i == 0 {
            out += &"-".repeat(total);
            out.push('\n');
        }
    }
    out += &"=".repeat(total);
    out.push('\n');
    let state: usize = plan
        .tensors
        .iter()
        .filter(|t| t.store == Store::State)
        .map(|t| t.len())
        .sum();
    out += "Reads: uN is unit N of the newest source's stage; names are layers (or `input`).\n";
    out += &format!("Trainable params: {}\n", group(plan.params_len as u64));
    out += &format!("BatchNorm running statistics: {}\n", group(state as u64));
    out += &format!("Multiply-adds per image: {}\n", group(plan.macs()));
    out += &format!(
        "Activations per image: {} floats stored by a forward pass, {} at the peak of inference\n",
        group(plan.activations_per_image() as u64),
        group(plan.peak_inference_per_image() as u64)
    );
    out
}
