//! Byte-pair merging of one pretokenized piece, with tiktoken's merge order.
//!
//! The rule, which decides every count: repeatedly merge the adjacent pair whose concatenation
//! has the lowest rank, the leftmost one on ties, until no adjacent pair is a token. Short pieces
//! use tiktoken's quadratic scan over a small array (fastest for the usual few bytes); long
//! pieces (a 100k-char run of one letter is a single piece) use a heap so they stay O(n log n).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::cache::CountCache;
use crate::vocab::{Rank, Vocab};

/// Pieces at least this long take the heap path.
const LARGE_PIECE: usize = 128;

/// Number of tokens of `piece`; `tag` names the encoding in the shared `cache`.
#[inline]
pub(crate) fn count_piece(vocab: &Vocab, piece: &[u8], cache: &mut CountCache, tag: u8) -> usize {
    if piece.len() == 1 {
        return 1;
    }
    cache.get_or_insert(tag, piece, || {
        if vocab.rank(piece).is_some() {
            1
        } else {
            count_merged(vocab, piece)
        }
    })
}

/// Number of tokens of a piece that is not itself a token.
fn count_merged(vocab: &Vocab, piece: &[u8]) -> usize {
    if piece.len() < LARGE_PIECE {
        let mut bounds = [0u8; LARGE_PIECE + 1];
        merge_small(vocab, piece, &mut bounds)
    } else {
        merge_large(vocab, piece).len() - 1
    }
}

/// Appends the tokens of `piece` to `out`.
pub(crate) fn encode_piece(vocab: &Vocab, piece: &[u8], out: &mut Vec<Rank>) {
    if let Some(rank) = vocab.rank(piece) {
        out.push(rank);
        return;
    }
    let rank_of = |bytes: &[u8]| vocab.rank(bytes).expect("every byte and merge result is a token");
    if piece.len() < LARGE_PIECE {
        let mut bounds = [0u8; LARGE_PIECE + 1];
        let parts = merge_small(vocab, piece, &mut bounds);
        out.extend(
            bounds[..=parts]
                .windows(2)
                .map(|w| rank_of(&piece[w[0] as usize..w[1] as usize])),
        );
    } else {
        let bounds = merge_large(vocab, piece);
        out.extend(bounds.windows(2).map(|w| rank_of(&piece[w[0]..w[1]])));
    }
}

/// tiktoken's scan: `bounds[..=n]` ends up holding the token boundaries; returns n, the count.
#[inline]
fn merge_small(vocab: &Vocab, piece: &[u8], bounds: &mut [u8; LARGE_PIECE + 1]) -> usize {
    let len = piece.len();
    // ranks[i] is the rank of the token that merging parts i and i+1 would make.
    let mut ranks = [Rank::MAX; LARGE_PIECE];
    for (i, bound) in bounds[..=len].iter_mut().enumerate() {
        *bound = i as u8;
    }
    for i in 0..len - 1 {
        ranks[i] = vocab.pair_rank(piece[i], piece[i + 1]);
    }
    let mut parts = len; // bounds[..=parts] are live
    loop {
        let mut best = (Rank::MAX, 0);
        for (i, &rank) in ranks[..parts - 1].iter().enumerate() {
            if rank < best.0 {
                best = (rank, i);
            }
        }
        if best.0 == Rank::MAX {
            return parts;
        }
        let i = best.1;
        // Remove boundary i+1: parts i and i+1 become one.
        bounds.copy_within(i + 2..=parts, i + 1);
        ranks.copy_within(i + 1..parts - 1, i);
        parts -= 1;
        let pair_rank = |j: usize| {
            if j + 2 <= parts {
                vocab
                    .rank(&piece[bounds[j] as usize..bounds[j + 2] as usize])
                    .unwrap_or(Rank::MAX)
            } else {
                Rank::MAX
            }
        };
        ranks[i] = pair_rank(i);
        if i > 0 {
            ranks[i - 1] = pair_rank(i - 1);
        }
    }
}

/// The same merge order with a min-heap of candidate pairs, (rank, start) ordered so ties go
/// to the leftmost pair. Returns the token boundaries (first 0, last piece.len()).
fn merge_large(vocab: &Vocab, piece: &[u8]) -> Vec<usize> {
    let len = piece.len();
    // For a live token starting at byte i: end[i] is its end and prev[i] the previous start.
    let mut end: Vec<usize> = (1..=len).collect();
    let mut prev: Vec<usize> = (0..len).map(|i| i.wrapping_sub(1)).collect();
    let mut alive = vec![true; len];
    let mut heap = BinaryHeap::with_capacity(len);
    for i in 0..len - 1 {
        if let Some(rank) = vocab.rank(&piece[i..i + 2]) {
            heap.push(Reverse((rank, i, i + 1, i + 2)));
        }
    }
    while let Some(Reverse((_, start, middle, stop))) = heap.pop() {
        // Stale if either token of the pair has changed since the pair was pushed.
        if !alive[start] || end[start] != middle || !alive[middle] || end[middle] != stop {
            continue;
        }
        alive[middle] = false;
        end[start] = stop;
        if stop < len {
            prev[stop] = start;
            let after = end[stop];
            if let Some(rank) = vocab.rank(&piece[start..after]) {
                heap.push(Reverse((rank, start, stop, after)));
            }
        }
        if start > 0 {
            let before = prev[start];
            if let Some(rank) = vocab.rank(&piece[before..stop]) {
                heap.push(Reverse((rank, before, start, stop)));
            }
        }
    }
    let mut bounds = vec![0];
    let mut at = 0;
    while at < len {
        at = end[at];
        bounds.push(at);
    }
    bounds
}
