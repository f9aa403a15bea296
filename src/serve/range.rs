//! `Range` header parsing (RFC 9110 section 14), with the contract's amplification limits.

/// Most ranges one request may ask for before the header is ignored (CONTRACT section 4).
pub const MAX_RANGES: usize = 16;

/// An inclusive byte range within an object (the default, `0-0`, is the first byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ByteRange {
    /// First byte.
    pub start: u64,
    /// Last byte, inclusive.
    pub end: u64,
}

impl ByteRange {
    /// Number of bytes in the range.
    pub fn len(&self) -> u64 {
        self.end - self.start + 1
    }

    /// A range always holds at least one byte; this exists for clippy's `len` convention.
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// What a `Range` header asks of an object of a given length.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(
    clippy::large_enum_variant,
    reason = "one per request, on the stack: boxing the ranges would bring back the allocation they are inline to avoid"
)]
pub enum RangeRequest {
    /// Answer with the whole object (no header, malformed, unknown unit, or over the limits).
    Whole,
    /// Answer 206 with these ranges: sorted, coalesced, non-empty.
    Partial(Ranges),
    /// Answer 416: well-formed, but no range overlaps the object.
    Unsatisfiable,
}

/// At most [`MAX_RANGES`] ranges, kept inline: parsing a `Range` header allocates nothing
/// (players send one with nearly every segment request).
pub type Ranges = Inline<ByteRange, MAX_RANGES>;

/// Up to `N` values kept inline, in the order pushed.
#[derive(Debug, Clone, Copy)]
pub struct Inline<T, const N: usize> {
    items: [T; N],
    len: usize,
}

impl<T: Copy + Default, const N: usize> Inline<T, N> {
    fn new() -> Self {
        Inline {
            items: [T::default(); N],
            len: 0,
        }
    }

    /// Adds `value`; `false` (and nothing added) when there are `N` already.
    fn push(&mut self, value: T) -> bool {
        match self.items.get_mut(self.len) {
            Some(slot) => {
                *slot = value;
                self.len += 1;
                true
            }
            None => false,
        }
    }
}

impl<T, const N: usize> std::ops::Deref for Inline<T, N> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        &self.items[..self.len]
    }
}

impl<T, const N: usize> std::ops::DerefMut for Inline<T, N> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut self.items[..self.len]
    }
}

impl<T: PartialEq, const N: usize> PartialEq for Inline<T, N> {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl<T: Eq, const N: usize> Eq for Inline<T, N> {}

impl<'a, T, const N: usize> IntoIterator for &'a Inline<T, N> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl<T: Copy + Default, const N: usize> FromIterator<T> for Inline<T, N> {
    /// The first `N` values (for tests and tools; [`parse`] never makes more ranges).
    fn from_iter<I: IntoIterator<Item = T>>(values: I) -> Self {
        let mut collected = Inline::new();
        for value in values {
            if !collected.push(value) {
                break;
            }
        }
        collected
    }
}

/// One range-spec as written, before it meets the object length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spec {
    /// `a-b` or `a-` (`last` is `None`).
    FromTo { first: u64, last: Option<u64> },
    /// `-n`: the last n bytes.
    Suffix(u64),
}

impl Default for Spec {
    /// A placeholder for unused inline slots.
    fn default() -> Spec {
        Spec::Suffix(0)
    }
}

/// Parses a decimal without sign or spaces; `None` on anything else or overflow.
fn number(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// The range-specs of one header, up to one past [`MAX_RANGES`] (which is enough to know
/// the header asks for too many).
type Specs = Inline<Spec, { MAX_RANGES + 1 }>;

/// Parses the header's syntax; `None` means malformed (and the header is ignored).
fn parse_specs(header: &str) -> Option<Specs> {
    let (unit, set) = header.trim().split_once('=')?;
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return None;
    }
    let mut specs = Specs::new();
    for part in set.split(',') {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        let (first, last) = part.split_once('-')?;
        let (first, last) = (first.trim(), last.trim());
        let spec = if first.is_empty() {
            Spec::Suffix(number(last)?)
        } else {
            let first = number(first)?;
            let last = if last.is_empty() {
                None
            } else {
                Some(number(last)?)
            };
            if last.is_some_and(|last| last < first) {
                return None;
            }
            Spec::FromTo { first, last }
        };
        if !specs.push(spec) || specs.len() > MAX_RANGES {
            return Some(specs);
        }
    }
    if specs.is_empty() { None } else { Some(specs) }
}

/// Decides what to send for `header` against an object of `length` bytes.
///
/// Malformed headers and unknown units are ignored, as RFC 9110 requires. More than
/// [`MAX_RANGES`] ranges, or ranges adding up to more than the object, are answered whole so
/// that a request cannot make the server send more than it asked to store. Overlapping and
/// adjacent ranges are coalesced.
pub fn parse(header: &str, length: u64) -> RangeRequest {
    let Some(specs) = parse_specs(header) else {
        return RangeRequest::Whole;
    };
    let specs = &specs[..];
    if specs.len() > MAX_RANGES {
        return RangeRequest::Whole;
    }
    if length == 0
        && specs
            .iter()
            .any(|spec| matches!(spec, Spec::Suffix(count) if *count > 0))
    {
        // RFC 9110 section 14.1.1: on a zero-length representation a suffix range with a
        // non-zero length is the one satisfiable form; what it selects is the whole (empty)
        // representation, which only a 200 can carry.
        return RangeRequest::Whole;
    }
    let mut ranges: Ranges = specs
        .iter()
        .filter_map(|spec| match *spec {
            Spec::FromTo { first, last } if first < length => Some(ByteRange {
                start: first,
                end: last.map_or(length - 1, |last| last.min(length - 1)),
            }),
            Spec::Suffix(count) if count > 0 && length > 0 => Some(ByteRange {
                start: length.saturating_sub(count),
                end: length - 1,
            }),
            _ => None,
        })
        .collect();
    if ranges.is_empty() {
        return RangeRequest::Unsatisfiable;
    }
    let requested: u128 = ranges.iter().map(|range| u128::from(range.len())).sum();
    if requested > u128::from(length) {
        return RangeRequest::Whole;
    }
    // Sorted, then coalesced in place.
    ranges.sort_unstable_by_key(|range| range.start);
    let mut kept: usize = 0;
    for index in 0..ranges.len() {
        let range = ranges[index];
        match kept.checked_sub(1).map(|last| &mut ranges[last]) {
            Some(last) if range.start <= last.end.saturating_add(1) => {
                last.end = last.end.max(range.end);
            }
            _ => {
                ranges[kept] = range;
                kept += 1;
            }
        }
    }
    ranges.len = kept;
    RangeRequest::Partial(ranges)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partial(ranges: &[(u64, u64)]) -> RangeRequest {
        RangeRequest::Partial(
            ranges
                .iter()
                .map(|&(start, end)| ByteRange { start, end })
                .collect(),
        )
    }

    #[test]
    fn single_ranges_of_each_form() {
        assert_eq!(parse("bytes=0-99", 1000), partial(&[(0, 99)]));
        assert_eq!(parse("bytes=500-", 1000), partial(&[(500, 999)]));
        assert_eq!(parse("bytes=-100", 1000), partial(&[(900, 999)]));
        assert_eq!(parse("bytes=990-2000", 1000), partial(&[(990, 999)]));
    }

    #[test]
    fn range_suffix_longer_than_object_returns_whole_object_range() {
        assert_eq!(parse("bytes=-5000", 1000), partial(&[(0, 999)]));
    }

    #[test]
    fn unit_and_spaces_are_lenient_but_unit_must_be_bytes() {
        assert_eq!(parse("Bytes = 0-1 , 5-6", 10), partial(&[(0, 1), (5, 6)]));
        assert_eq!(parse("items=0-1", 10), RangeRequest::Whole);
    }

    #[test]
    fn malformed_headers_are_ignored() {
        for bad in [
            "",
            "bytes",
            "bytes=",
            "bytes=a-b",
            "bytes=5-1",
            "bytes=--1",
            "bytes=1",
            "bytes=+1-2",
            "bytes=0-1;x",
        ] {
            assert_eq!(parse(bad, 100), RangeRequest::Whole, "{bad:?}");
        }
    }

    #[test]
    fn ranges_past_the_end_are_unsatisfiable() {
        assert_eq!(parse("bytes=1000-", 1000), RangeRequest::Unsatisfiable);
        assert_eq!(parse("bytes=-0", 1000), RangeRequest::Unsatisfiable);
        assert_eq!(parse("bytes=0-", 0), RangeRequest::Unsatisfiable);
        assert_eq!(
            parse("bytes=-5", 0),
            RangeRequest::Whole,
            "RFC 9110 14.1.1: a non-zero suffix is satisfiable on an empty object"
        );
        assert_eq!(parse("bytes=-0", 0), RangeRequest::Unsatisfiable);
        assert_eq!(
            parse("bytes=2000-3000,1000-1500", 1000),
            RangeRequest::Unsatisfiable
        );
    }

    #[test]
    fn unsatisfiable_parts_are_dropped_when_others_fit() {
        assert_eq!(parse("bytes=5000-6000,0-9", 1000), partial(&[(0, 9)]));
    }

    #[test]
    fn overlapping_and_adjacent_ranges_are_coalesced_and_sorted() {
        assert_eq!(
            parse("bytes=50-59,0-9,5-14,15-19", 100),
            partial(&[(0, 19), (50, 59)])
        );
    }

    #[test]
    fn more_than_sixteen_ranges_answers_whole() {
        let many: Vec<String> = (0..17)
            .map(|i| format!("{}-{}", i * 10, i * 10 + 1))
            .collect();
        assert_eq!(
            parse(&format!("bytes={}", many.join(",")), 1000),
            RangeRequest::Whole
        );
        let sixteen = &many[..16];
        assert!(matches!(
            parse(&format!("bytes={}", sixteen.join(",")), 1000),
            RangeRequest::Partial(_)
        ));
    }

    #[test]
    fn ranges_adding_up_past_the_object_answer_whole() {
        assert_eq!(parse("bytes=0-,0-", 1000), RangeRequest::Whole);
        assert_eq!(parse("bytes=0-599,400-999", 1000), RangeRequest::Whole);
    }

    #[test]
    fn huge_numbers_do_not_overflow() {
        assert_eq!(
            parse("bytes=0-99999999999999999999999", 10),
            RangeRequest::Whole
        );
        assert_eq!(
            parse("bytes=18446744073709551615-", 10),
            RangeRequest::Unsatisfiable
        );
    }
}
