//! Collects the edits that turn the client's statement into the shard's and applies them in one
//! pass over the original bytes: replaced and removed token ranges, and hidden columns appended
//! after the last select-list item. Bytes outside the edits are copied unchanged, so literals,
//! comments and `$n` parameters keep their exact spelling.

use super::shape::Code;
use super::Unsupported;
use std::ops::Range;

#[derive(Debug)]
pub(crate) struct Splicer<'c> {
    code: &'c Code<'c>,
    /// Shard columns allotted so far (select-list items first, then hidden ones).
    pub(crate) next_col: usize,
    hidden: Vec<Vec<u8>>,
    /// Byte ranges of the original and their replacements.
    edits: Vec<(Range<usize>, Vec<u8>)>,
}

impl<'c> Splicer<'c> {
    pub(crate) fn new(code: &'c Code<'c>) -> Self {
        Splicer {
            code,
            next_col: 0,
            hidden: Vec::new(),
            edits: Vec::new(),
        }
    }

    /// The next shard column of the client's select list.
    pub(crate) fn column(&mut self) -> usize {
        self.next_col += 1;
        self.next_col - 1
    }

    /// Appends `text` (`width` columns) to the shard's select list; returns its first column.
    pub(crate) fn hide(&mut self, text: &[u8], width: usize) -> usize {
        self.hidden.push(text.to_vec());
        self.next_col += width;
        self.next_col - width
    }

    /// Replaces the tokens `toks` with `text`.
    pub(crate) fn replace(&mut self, toks: Range<usize>, text: Vec<u8>) {
        self.edits.push((self.code.bytes(&toks), text));
    }

    /// Removes the tokens `toks` and the whitespace and comments before them.
    pub(crate) fn remove_with_space_before(&mut self, toks: Range<usize>) {
        let r = self.code.bytes(&toks);
        let from = toks
            .start
            .checked_sub(1)
            .and_then(|p| self.code.toks.get(p))
            .map_or(r.start, |t| t.end);
        self.edits.push((from..r.end, Vec::new()));
    }

    /// Replaces everything from token `tok` to the end of the statement with `text`.
    pub(crate) fn replace_to_end(&mut self, tok: usize, text: Vec<u8>) {
        if let Some(t) = self.code.toks.get(tok) {
            self.edits.push((t.start..self.code.src.len(), text));
        }
    }

    /// Applies the edits; hidden columns go right after token `list_end - 1`, the select list's
    /// last.
    pub(crate) fn finish(mut self, list_end: usize) -> Result<Vec<u8>, Unsupported> {
        if !self.hidden.is_empty() {
            let at = list_end
                .checked_sub(1)
                .and_then(|i| self.code.toks.get(i))
                .ok_or_else(Unsupported::unreadable)?
                .end;
            let mut text = Vec::new();
            for h in &self.hidden {
                text.extend_from_slice(b", ");
                text.extend_from_slice(h);
            }
            self.edits.push((at..at, text));
        }
        self.edits.sort_by_key(|(r, _)| (r.start, r.end));
        let src = self.code.src;
        let mut out = Vec::with_capacity(src.len() + 64);
        let mut copied = 0;
        for (r, text) in &self.edits {
            // Edits come from disjoint clauses; an overlap means the analysis went wrong.
            let keep = src
                .get(copied..r.start)
                .ok_or_else(Unsupported::unreadable)?;
            out.extend_from_slice(keep);
            out.extend_from_slice(text);
            copied = r.end;
        }
        out.extend_from_slice(src.get(copied..).unwrap_or_default());
        Ok(out)
    }
}
