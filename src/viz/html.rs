//! The HTML shell every page here shares (the live status page, the
//! cluster view, swimlanes, the demo's report): one stylesheet, no
//! external file of any kind. Pages are written as well-formed XML (XHTML
//! syntax that HTML parsers read the same), so tests parse them strictly.

use super::xml::escape;

/// The stylesheet of every page.
const STYLE: &str = "
body { font-family: sans-serif; margin: 1em 2em; color: #222; background: #fafafa; }
h1 { font-size: 1.4em; margin: 0.3em 0; }
h2 { font-size: 1.1em; margin: 1.2em 0 0.4em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.3em 0; }
th, td { border: 1px solid #ccc; padding: 2px 6px; text-align: left; vertical-align: top; }
th { background: #eee; }
td.num { text-align: right; font-family: monospace; }
code, .lsn { font-family: monospace; }
.badge { display: inline-block; padding: 2px 10px; border-radius: 10px; color: #fff; font-weight: bold; }
.muted { color: #777; }
.row { display: flex; flex-wrap: wrap; gap: 1.5em; align-items: flex-start; }
.card { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: 0.6em 1em; }
svg { max-width: 100%; height: auto; }
svg.machine { max-height: 520px; }
";

/// A complete page: `head_extra` goes in `<head>` (a script), `body` is
/// already escaped markup.
pub fn document(title: &str, head_extra: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html xmlns=\"http://www.w3.org/1999/xhtml\" lang=\"en\">\n<head>\n<meta charset=\"utf-8\"/>\n<meta name=\"viewport\" content=\"width=device-width\"/>\n<title>{}</title>\n<style>{STYLE}</style>\n{head_extra}</head>\n<body>\n{body}</body>\n</html>\n",
        escape(title)
    )
}

/// Inline script text wrapped so the page stays well-formed XML and HTML
/// parsers run it unchanged.
pub fn script(js: &str) -> String {
    format!("<script>//<![CDATA[\n{js}\n//]]></script>\n")
}
