//! Error texts as the status page shows them: whole, but with the keys and data they may name elided, so that the
//! page never tells who is in an audience. ldsync's own messages name keys in two ways: a refused batch's key sample
//! (`(add 3 (a, b, c))`) and a rejected key's value in double quotes; LaunchDarkly's and the warehouses' messages
//! quote the values they name. Every key sample becomes its count, and whatever is quoted (`"…"`, `'…'`) becomes
//! `…`. The names ldsync writes itself (a sync, a segment, a project) are in backticks, and stay.

/// What stands in for elided text.
const ELIDED: &str = "…";

/// `text` with the key samples and quoted values it holds elided.
pub fn elide_keys(text: &str) -> String {
    elide_quoted(&elide_key_samples(text))
}

/// `(add 3 (a, b, c))` becomes `(add 3 keys)`. A sample whose end cannot be found is elided to the end of the text.
fn elide_key_samples(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(count_end) = next_sample(rest) {
        out.push_str(&rest[..count_end]);
        out.push_str(" keys)");
        let sample = &rest[count_end..];
        rest = sample.find("))").map_or("", |end| &sample[end + 2..]);
    }
    out.push_str(rest);
    out
}

/// Where the count of the next key sample in `text` ends (after `(add 3` of `(add 3 (a, b))`).
fn next_sample(text: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(at) = text[from..].find('(').map(|at| at + from) {
        let after = &text[at + 1..];
        let action = ["add ", "remove "]
            .into_iter()
            .find(|a| after.starts_with(a));
        if let Some(action) = action {
            let count = &after[action.len()..];
            let digits = count.len() - count.trim_start_matches(|c: char| c.is_ascii_digit()).len();
            if digits > 0 && count[digits..].starts_with(" (") {
                return Some(at + 1 + action.len() + digits);
            }
        }
        from = at + 1;
    }
    None
}

/// Text between double quotes, or between single quotes that open after a non-word character (so that apostrophes,
/// as in `LaunchDarkly's`, stay), becomes `…`. A double quote that is never closed elides the rest of the text.
fn elide_quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.char_indices().peekable();
    let mut previous: Option<char> = None;
    while let Some((at, c)) = chars.next() {
        let opens = c == '"' || (c == '\'' && !previous.is_some_and(char::is_alphanumeric));
        let close = opens.then(|| closing(&text[at + 1..], c)).flatten();
        match close {
            Some(len) => {
                out.push(c);
                out.push_str(ELIDED);
                out.push(c);
                // Skip the quoted text and its closing quote.
                while chars.peek().is_some_and(|&(i, _)| i <= at + len + 1) {
                    chars.next();
                }
                previous = Some(c);
            }
            None if c == '"' => {
                out.push(c);
                out.push_str(ELIDED);
                return out;
            }
            None => {
                out.push(c);
                previous = Some(c);
            }
        }
    }
    out
}

/// The length of the quoted text that `after` (the text after an opening `quote`) starts with: up to the next
/// unescaped double quote, or the next single quote not followed by a word character.
fn closing(after: &str, quote: char) -> Option<usize> {
    let mut escaped = false;
    let mut chars = after.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        if quote == '"' {
            if c == '"' && !escaped {
                return Some(at);
            }
            escaped = c == '\\' && !escaped;
        } else if c == '\''
            && !chars
                .peek()
                .is_some_and(|&(_, next)| next.is_alphanumeric())
        {
            return Some(at);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_batch_shows_its_key_count_not_its_keys() {
        let error = "sync `pro-users`: LaunchDarkly refused batch 2 of 3 of run r1 (add 12 (u-1, u-2, … and 10 \
                     more)): LaunchDarkly rejected the change (400 invalid): bad; 1 batches were acknowledged";
        assert_eq!(
            elide_keys(error),
            "sync `pro-users`: LaunchDarkly refused batch 2 of 3 of run r1 (add 12 keys): LaunchDarkly rejected the \
             change (400 invalid): bad; 1 batches were acknowledged"
        );
        assert_eq!(
            elide_keys("(remove 2 (a, b)) and (remove 1 (c))"),
            "(remove 2 keys) and (remove 1 keys)"
        );
    }

    #[test]
    fn a_sample_without_its_end_is_elided_to_the_end() {
        assert_eq!(
            elide_keys("refused (add 3 (a, b, c"),
            "refused (add 3 keys)"
        );
    }

    #[test]
    fn quoted_values_are_elided_and_apostrophes_and_backticks_stay() {
        assert_eq!(
            elide_keys(
                "row 4 of the model has a key longer than 256 characters (\"user-\\\"9\\\"\"); see `pro-users`"
            ),
            "row 4 of the model has a key longer than 256 characters (\"…\"); see `pro-users`"
        );
        assert_eq!(
            elide_keys("LaunchDarkly's answer: context 'user-7' isn't valid"),
            "LaunchDarkly's answer: context '…' isn't valid"
        );
        assert_eq!(elide_keys("unclosed \"user-7 and more"), "unclosed \"…");
        assert_eq!(elide_keys("the users' segment"), "the users' segment");
    }

    #[test]
    fn text_that_names_no_key_is_unchanged() {
        let error = "it would remove 40 of 100 members (40.0%), over gates.max_remove_percent 5%";
        assert_eq!(elide_keys(error), error);
    }
}
