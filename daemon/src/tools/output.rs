//! Bounding what tools return to the model: cutting a long text to its head and tail with a
//! marker in between, and cutting a single long line. Cuts land on UTF-8 character boundaries and,
//! where one is close, on line boundaries, so the model sees whole lines on either side.

/// `s` if it fits in `max` bytes, else its head and tail (about `max / 2` bytes each) around a
/// marker saying how many bytes were cut.
pub(crate) fn cap_text(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let half = max / 2;
    let mut head_end = floor_boundary(s, half);
    if let Some(nl) = s[..head_end].rfind('\n')
        && nl + 1 >= head_end - head_end / 4
    {
        head_end = nl + 1;
    }
    let mut tail_start = ceil_boundary(s, s.len() - half);
    if let Some(nl) = s[tail_start..].find('\n')
        && nl < half / 4
    {
        tail_start += nl + 1;
    }
    let cut = tail_start - head_end;
    let mut out = String::with_capacity(head_end + (s.len() - tail_start) + 64);
    out.push_str(&s[..head_end]);
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(&format!("[… {cut} bytes omitted …]\n"));
    out.push_str(&s[tail_start..]);
    out
}

/// `line` cut to at most `max_chars` characters, with a marker when cut.
pub(crate) fn cut_line(line: &str, max_chars: usize) -> std::borrow::Cow<'_, str> {
    match line.char_indices().nth(max_chars) {
        None => line.into(),
        Some((at, _)) => format!("{}… [line cut at {max_chars} characters]", &line[..at]).into(),
    }
}

/// The largest char boundary of `s` at or below `i`.
pub(crate) fn floor_boundary(s: &str, i: usize) -> usize {
    if i >= s.len() {
        return s.len();
    }
    let mut i = i;
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// The smallest char boundary of `s` at or above `i`.
pub(crate) fn ceil_boundary(s: &str, i: usize) -> usize {
    let mut i = i;
    while i < s.len() && !s.is_char_boundary(i) {
        i += 1;
    }
    i.min(s.len())
}
