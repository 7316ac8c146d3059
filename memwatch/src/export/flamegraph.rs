//! A flame graph of the live heap, drawn by inferno from collapsed stacks.

use super::{HeapStack, collapsed};

pub fn render(stacks: &[HeapStack], title: &str) -> std::io::Result<Vec<u8>> {
    let text = collapsed::render(stacks);
    let mut opts = inferno::flamegraph::Options::default();
    opts.title = title.to_string();
    opts.count_name = "bytes".to_string();
    opts.colors = inferno::flamegraph::Palette::Basic(inferno::flamegraph::color::BasicPalette::Mem);
    let mut svg = Vec::new();
    if text.is_empty() {
        // inferno refuses empty input; an empty picture says "nothing live".
        inferno::flamegraph::from_lines(&mut opts, std::iter::once("no live allocations 0"), &mut svg)?;
    } else {
        inferno::flamegraph::from_lines(&mut opts, text.lines(), &mut svg)?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_an_svg_naming_the_frames() {
        let svg = String::from_utf8(render(&super::super::collapsed::tests::stacks(), "live heap").unwrap()).unwrap();
        assert!(svg.starts_with("<?xml"), "{}", &svg[..80]);
        assert!(svg.contains("<svg") && svg.contains("leak_here") && svg.contains("live heap"));
        assert!(svg.contains("3,000 bytes"), "counts are labelled in bytes");
    }
}
