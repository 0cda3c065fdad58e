//! The results of a run and the table they print as.

use std::fmt::Write as _;

/// One case's outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaseResult {
    /// The case's name, also part of its user id.
    pub case: String,
    /// The answers the contract asks for, in the order of the case's requests.
    pub expected: String,
    /// The answers the microservice gave.
    pub got: String,
    /// Whether every answer was the expected one.
    pub passed: bool,
    /// What differed, when a status alone does not say (e.g. a body other than the seed's).
    pub detail: Option<String>,
}

/// Every case's outcome, and notes on the cases the flags left out.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// In the order the cases ran.
    pub results: Vec<CaseResult>,
    /// Cases not run, and why.
    pub notes: Vec<String>,
}

impl Report {
    pub(crate) fn push(&mut self, result: CaseResult) {
        self.results.push(result);
    }

    pub(crate) fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    /// How many cases passed.
    pub fn passed(&self) -> usize {
        self.results.iter().filter(|r| r.passed).count()
    }

    /// How many cases failed.
    pub fn failed(&self) -> usize {
        self.results.len() - self.passed()
    }

    /// The names of the failed cases, in order.
    pub fn failed_cases(&self) -> Vec<&str> {
        self.results
            .iter()
            .filter(|r| !r.passed)
            .map(|r| r.case.as_str())
            .collect()
    }

    /// 0 when every case passed (and there was at least one), else 1.
    pub fn exit_code(&self) -> u8 {
        if self.failed() == 0 && !self.results.is_empty() {
            0
        } else {
            1
        }
    }

    /// The notes, the table (case, expected, got, pass), what differed in failed cases, and a
    /// last line `N passed, M failed`.
    pub fn render(&self) -> String {
        let header = ["case", "expected", "got", "pass"];
        let rows: Vec<[&str; 4]> = self
            .results
            .iter()
            .map(|r| {
                let pass = if r.passed { "yes" } else { "NO" };
                [r.case.as_str(), r.expected.as_str(), r.got.as_str(), pass]
            })
            .collect();
        let mut widths = header.map(str::len);
        for row in &rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let line = |cells: [&str; 4]| {
            let mut line = String::new();
            for (i, (cell, width)) in cells.iter().zip(widths).enumerate() {
                if i + 1 == cells.len() {
                    line.push_str(cell);
                } else {
                    let _ = write!(line, "{cell:<width$}  ");
                }
            }
            line.push('\n');
            line
        };
        let mut out = String::new();
        for note in &self.notes {
            let _ = writeln!(out, "note: {note}");
        }
        out.push_str(&line(header));
        for row in rows {
            out.push_str(&line(row));
        }
        for result in &self.results {
            if let (false, Some(detail)) = (result.passed, &result.detail) {
                let _ = writeln!(out, "{}: {detail}", result.case);
            }
        }
        let _ = writeln!(out, "{} passed, {} failed", self.passed(), self.failed());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(case: &str, passed: bool) -> CaseResult {
        CaseResult {
            case: case.into(),
            expected: "200".into(),
            got: if passed { "200" } else { "500" }.into(),
            passed,
            detail: (!passed).then(|| "why".into()),
        }
    }

    #[test]
    fn the_table_aligns_and_ends_with_the_counts() {
        let report = Report {
            results: vec![result("connect", true), result("delete-unknown", false)],
            notes: vec!["bearer cases not run".into()],
        };
        let text = report.render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "note: bearer cases not run");
        assert_eq!(lines[1], "case            expected  got  pass");
        assert_eq!(lines[2], "connect         200       200  yes");
        assert_eq!(lines[3], "delete-unknown  200       500  NO");
        assert_eq!(lines[4], "delete-unknown: why");
        assert_eq!(lines.last(), Some(&"1 passed, 1 failed"));
        assert_eq!(report.exit_code(), 1);
        assert_eq!(report.failed_cases(), ["delete-unknown"]);
        assert_eq!(Report::default().exit_code(), 1, "no case run is no pass");
    }
}
