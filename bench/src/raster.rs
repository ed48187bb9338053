//! PNG plots: the SVGs of [`crate::plot`] rasterised with resvg, text set in a font of the
//! machine (DejaVu Sans from Debian's `fonts-dejavu-core` where it is installed; any font the
//! system has otherwise). Nothing is fetched: it works offline.

use std::sync::OnceLock;

use resvg::tiny_skia::{Pixmap, Transform};
use resvg::usvg;

use crate::{BenchError, Context, Result};

/// Families tried in this order for the SVGs' `sans-serif`.
const PREFERRED: [&str; 4] = ["DejaVu Sans", "Liberation Sans", "Noto Sans", "Arial"];

/// The system's fonts, loaded once, with `sans-serif` set to a family that exists.
fn options() -> Result<&'static usvg::Options<'static>> {
    static OPTIONS: OnceLock<std::result::Result<usvg::Options<'static>, String>> = OnceLock::new();
    OPTIONS
        .get_or_init(|| {
            let mut opt = usvg::Options::default();
            let db = opt.fontdb_mut();
            db.load_system_fonts();
            let families: Vec<String> = db
                .faces()
                .flat_map(|f| f.families.iter().map(|(name, _)| name.clone()))
                .collect();
            let family = PREFERRED
                .iter()
                .find(|p| families.iter().any(|f| f == *p))
                .map(|p| (*p).to_owned())
                .or_else(|| families.first().cloned())
                .ok_or_else(|| {
                    "no font on this machine to set the plots' text in: install one \
                     (apt-get install fonts-dejavu-core)"
                        .to_owned()
                })?;
            db.set_sans_serif_family(family.clone());
            opt.font_family = family;
            Ok(opt)
        })
        .as_ref()
        .map_err(|e| BenchError::new(e.clone()))
}

/// The SVG as a PNG, `scale` times its size.
pub fn svg_to_png(svg: &str, scale: f32) -> Result<Vec<u8>> {
    let opt = options()?;
    let tree = usvg::Tree::from_str(svg, opt).context("parsing the plot's SVG")?;
    let size = tree
        .size()
        .to_int_size()
        .scale_by(scale)
        .context("the plot's size")?;
    let mut pixmap =
        Pixmap::new(size.width(), size.height()).context("the plot has no size to draw it at")?;
    resvg::render(
        &tree,
        Transform::from_scale(scale, scale),
        &mut pixmap.as_mut(),
    );
    pixmap.encode_png().context("encoding the PNG")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn rasterises_with_text() {
        let svg = r#"<svg xmlns="http://www.w3.org/2000/svg" width="100" height="40"><rect width="100" height="40" fill="white"/><text x="5" y="25" font-family="sans-serif" font-size="16">ms 123</text></svg>"#;
        let png = svg_to_png(svg, 2.0).unwrap();
        assert_eq!(&png[1..4], b"PNG");
        // The text is drawn: some pixels are dark.
        let blank = r#"<svg xmlns="http://www.w3.org/2000/svg" width="100" height="40"><rect width="100" height="40" fill="white"/></svg>"#;
        let empty = svg_to_png(blank, 2.0).unwrap();
        assert_ne!(png, empty);
        let tree = usvg::Tree::from_str(svg, options().unwrap()).unwrap();
        assert!(tree.root().has_children());
        assert!(svg_to_png("<not svg", 1.0).is_err());
    }
}
