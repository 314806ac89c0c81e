//! Near-miss suggestions: names that differ only by case or by a small edit distance.

/// Candidates that `wanted` was probably meant to be: equal ignoring ASCII case, or within
/// edit distance (optimal string alignment: insert, delete, substitute, swap two neighbours)
/// 1 for short names (up to 4 chars) or 2 for longer ones. Sorted, deduplicated,
/// never `wanted` itself.
pub(super) fn near<'a>(wanted: &str, candidates: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let limit = if wanted.chars().count() <= 4 { 1 } else { 2 };
    let mut out: Vec<String> = candidates
        .into_iter()
        .filter(|c| *c != wanted)
        .filter(|c| c.eq_ignore_ascii_case(wanted) || strsim::osa_distance(wanted, c) <= limit)
        .map(str::to_string)
        .collect();
    out.sort();
    out.dedup();
    out
}

/// `` `a`, `b` or `c` ``.
pub(super) fn quote_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|i| format!("`{i}`")).collect();
    match quoted.split_last() {
        None => String::new(),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn near_matches_case_and_typos() {
        let c = ["frontend", "Backend", "db", "dbs", "monitoring"];
        assert_eq!(near("frontned", c), vec!["frontend"]);
        assert_eq!(near("backend", c), vec!["Backend"]);
        assert_eq!(near("db", c), vec!["dbs"]);
        assert_eq!(near("bd", c), vec!["db"]);
        assert_eq!(near("web", c), Vec::<String>::new());
        assert_eq!(near("frontend", c), Vec::<String>::new());
    }

    #[test]
    fn quote_list_joins() {
        assert_eq!(quote_list(&["a".into()]), "`a`");
        assert_eq!(
            quote_list(&["a".into(), "b".into(), "c".into()]),
            "`a`, `b` or `c`"
        );
    }
}
