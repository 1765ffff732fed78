//! Profile output formats: a flame graph (SVG, readable in any browser, one `<title>` tooltip
//! per frame) and pprof (`perftools.profiles.Profile`, protobuf, as `go tool pprof` and
//! Pyroscope read it). Both take stacks outermost first with a sample count.

use std::collections::HashMap;

/// One frame of a profile.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Frame {
    pub name: String,
    pub filename: String,
    pub line: u32,
}

impl Frame {
    pub fn label(&self) -> String {
        format!("{} ({}:{})", self.name, self.filename, self.line)
    }
}

#[derive(Default)]
struct Node {
    count: u64,
    children: Vec<(String, Node)>,
}

impl Node {
    fn add(&mut self, stack: &[String], n: u64) {
        self.count += n;
        if let Some((first, rest)) = stack.split_first() {
            let i = match self.children.iter().position(|(k, _)| k == first) {
                Some(i) => i,
                None => {
                    self.children.push((first.clone(), Node::default()));
                    self.children.len() - 1
                }
            };
            self.children[i].1.add(rest, n);
        }
    }

    fn depth(&self) -> usize {
        1 + self.children.iter().map(|(_, c)| c.depth()).max().unwrap_or(0)
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// A warm colour that depends only on the name (the same function, the same colour).
fn colour(name: &str) -> String {
    let h = name.bytes().fold(2166136261u32, |h, b| (h ^ u32::from(b)).wrapping_mul(16777619));
    format!("rgb({},{},{})", 205 + (h % 50), 80 + ((h >> 8) % 130), 40 + ((h >> 16) % 40))
}

const WIDTH: f64 = 1200.0;
const ROW: f64 = 16.0;

/// A flame graph of `stacks` (outermost first): widths are shares of the samples, the root at
/// the bottom. Frames narrower than 0.1 px are left out.
pub fn svg(stacks: &[(Vec<String>, u64)], title: &str) -> String {
    let mut root = Node::default();
    for (s, n) in stacks {
        root.add(s, *n);
    }
    let depth = root.depth();
    let height = (depth as f64 + 3.0) * ROW;
    let mut out = format!(
        "<?xml version=\"1.0\" standalone=\"no\"?>\n<svg version=\"1.1\" width=\"{WIDTH}\" height=\"{height}\" \
         xmlns=\"http://www.w3.org/2000/svg\" font-family=\"Verdana\" font-size=\"11\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"#f8f8f8\"/>\n\
         <text x=\"{}\" y=\"{}\" text-anchor=\"middle\" font-size=\"15\">{}</text>\n",
        WIDTH / 2.0,
        ROW * 1.2,
        escape(title)
    );
    let total = root.count.max(1) as f64;
    let mut rects = 0usize;
    // (node, name, x, level)
    let mut todo: Vec<(&Node, &str, f64, usize)> = vec![(&root, "all", 0.0, 0)];
    while let Some((node, name, x, level)) = todo.pop() {
        let w = node.count as f64 / total * WIDTH;
        if w < 0.1 {
            continue;
        }
        let y = height - (level as f64 + 1.0) * ROW - ROW * 0.5;
        let pct = 100.0 * node.count as f64 / total;
        // ~7 px per character at 11 px Verdana.
        let fits = ((w - 6.0) / 7.0).max(0.0) as usize;
        let text = if name.chars().count() <= fits {
            name.to_string()
        } else if fits > 3 {
            format!("{}..", name.chars().take(fits - 2).collect::<String>())
        } else {
            String::new()
        };
        out += &format!(
            "<g><title>{} ({} samples, {pct:.2}%)</title><rect x=\"{x:.2}\" y=\"{y:.2}\" width=\"{w:.2}\" height=\"{}\" \
             fill=\"{}\" rx=\"2\"/><text x=\"{:.2}\" y=\"{:.2}\">{}</text></g>\n",
            escape(name),
            node.count,
            ROW - 1.0,
            colour(name),
            x + 3.0,
            y + ROW - 4.5,
            escape(&text)
        );
        rects += 1;
        let mut cx = x;
        for (child_name, child) in &node.children {
            todo.push((child, child_name, cx, level + 1));
            cx += child.count as f64 / total * WIDTH;
        }
    }
    out += &format!("<!-- {rects} frames -->\n</svg>\n");
    out
}

/// Protocol-buffer writer for the few field kinds pprof needs.
#[derive(Default)]
struct Pb(Vec<u8>);

impl Pb {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }
    fn key(&mut self, field: u32, wire: u8) {
        self.varint(u64::from(field) << 3 | u64::from(wire));
    }
    fn uint(&mut self, field: u32, v: u64) {
        if v != 0 {
            self.key(field, 0);
            self.varint(v);
        }
    }
    fn bytes(&mut self, field: u32, b: &[u8]) {
        self.key(field, 2);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
    }
    fn packed(&mut self, field: u32, vs: &[u64]) {
        let mut inner = Pb::default();
        for v in vs {
            inner.varint(*v);
        }
        self.bytes(field, &inner.0);
    }
}

/// pprof `Profile` of Python stacks (outermost first, as [`Frame`]s): one sample type
/// `samples/count` and `cpu/nanoseconds` (count x period), one function and location per
/// distinct frame.
pub fn pprof(stacks: &[(Vec<Frame>, u64)], period_ns: u64, start_unix_ns: u64, duration_ns: u64) -> Vec<u8> {
    let mut strings: Vec<String> = vec![String::new()];
    let mut string_ids: HashMap<String, u64> = HashMap::from([(String::new(), 0)]);
    let mut sid = |s: &str| -> u64 {
        if let Some(i) = string_ids.get(s) {
            return *i;
        }
        strings.push(s.to_string());
        string_ids.insert(s.to_string(), strings.len() as u64 - 1);
        strings.len() as u64 - 1
    };
    let (samples_t, count_u, cpu_t, ns_u) = (sid("samples"), sid("count"), sid("cpu"), sid("nanoseconds"));
    let mut frame_ids: HashMap<&Frame, u64> = HashMap::new();
    let mut p = Pb::default();
    for (t, u) in [(samples_t, count_u), (cpu_t, ns_u)] {
        let mut vt = Pb::default();
        vt.uint(1, t);
        vt.uint(2, u);
        p.bytes(1, &vt.0); // sample_type
    }
    let mut functions = Pb::default();
    let mut locations = Pb::default();
    for (stack, n) in stacks {
        let mut ids = Vec::with_capacity(stack.len());
        // pprof lists a sample's locations leaf first.
        for f in stack.iter().rev() {
            let id = match frame_ids.get(f) {
                Some(id) => *id,
                None => {
                    let id = frame_ids.len() as u64 + 1;
                    frame_ids.insert(f, id);
                    let (name, file) = (sid(&f.name), sid(&f.filename));
                    let mut func = Pb::default();
                    func.uint(1, id);
                    func.uint(2, name);
                    func.uint(3, name);
                    func.uint(4, file);
                    func.uint(5, u64::from(f.line));
                    functions.bytes(5, &func.0);
                    let mut line = Pb::default();
                    line.uint(1, id);
                    line.uint(2, u64::from(f.line));
                    let mut loc = Pb::default();
                    loc.uint(1, id);
                    loc.bytes(4, &line.0);
                    locations.bytes(4, &loc.0);
                    id
                }
            };
            ids.push(id);
        }
        let mut s = Pb::default();
        s.packed(1, &ids);
        s.packed(2, &[*n, n.saturating_mul(period_ns)]);
        p.bytes(2, &s.0); // sample
    }
    p.0.extend_from_slice(&locations.0);
    p.0.extend_from_slice(&functions.0);
    for s in &strings {
        p.bytes(6, s.as_bytes()); // string_table (the first is "")
    }
    p.uint(9, start_unix_ns);
    p.uint(10, duration_ns);
    let mut pt = Pb::default();
    pt.uint(1, cpu_t);
    pt.uint(2, ns_u);
    p.bytes(11, &pt.0); // period_type
    p.uint(12, period_ns);
    p.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn svg_widths_follow_the_counts() {
        let s = svg(&[(vec!["main".into(), "a".into()], 70), (vec!["main".into(), "b".into()], 30)], "test");
        assert!(s.contains("<title>a (70 samples, 70.00%)</title>"), "{s}");
        assert!(s.contains("<title>b (30 samples, 30.00%)</title>"));
        assert!(s.contains("<title>main (100 samples, 100.00%)</title>"));
        assert!(s.contains("width=\"840.00\""), "a is 70% of 1200 px");
    }

    #[test]
    fn svg_escapes_names() {
        let s = svg(&[(vec!["<module>".into()], 1)], "a & b");
        assert!(s.contains("&lt;module&gt;") && s.contains("a &amp; b") && !s.contains("<module>"));
    }

    #[test]
    fn pprof_varints_and_strings() {
        let f = Frame { name: "f".into(), filename: "x.py".into(), line: 3 };
        let b = pprof(&[(vec![f.clone(), f], 5)], 10_000_000, 1, 2);
        // The string table holds each string once.
        let text = String::from_utf8_lossy(&b);
        assert_eq!(text.matches("x.py").count(), 1);
        assert!(text.contains("samples") && text.contains("nanoseconds"));
        let mut p = Pb::default();
        p.varint(300);
        assert_eq!(p.0, vec![0xac, 0x02]);
    }
}
