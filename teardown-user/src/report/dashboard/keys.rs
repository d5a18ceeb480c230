//! What the keys do: a small state machine ([`ViewState::key`]) from a key
//! to the view's next state, with no terminal involved, so it is
//! unit-tested. The view ([`super::view`]) reads the state; only quitting
//! reaches the run loop.

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use teardown_common::conn::CloseKind;

use super::Teardown;

/// The keys and what they do, as the help overlay lists them.
pub const HELP: &[(&str, &str)] = &[
    ("q Esc ^C", "stop the run (as Ctrl-C does)"),
    ("p space", "pause the screen (figures are still collected)"),
    ("s", "sort the teardowns: newest, duration, bytes, state"),
    ("f", "filter the teardowns by how they closed"),
    ("?", "show or hide this help"),
];

/// The order of the teardown list.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Sort {
    #[default]
    Newest,
    /// Longest first.
    Duration,
    /// Most bytes first.
    Bytes,
    /// By conn_state, then newest first.
    State,
}

impl Sort {
    pub const ALL: [Sort; 4] = [Sort::Newest, Sort::Duration, Sort::Bytes, Sort::State];

    fn next(self) -> Sort {
        let at = Sort::ALL.iter().position(|s| *s == self).unwrap_or(0);
        Sort::ALL[(at + 1) % Sort::ALL.len()]
    }

    /// Orders `rows` (which come oldest first) as this sort shows them.
    pub fn apply(self, rows: &mut [&Teardown]) {
        match self {
            Sort::Newest => rows.sort_by_key(|row| std::cmp::Reverse(row.seq)),
            Sort::Duration => rows.sort_by_key(|row| {
                (
                    std::cmp::Reverse(row.duration_ns),
                    std::cmp::Reverse(row.seq),
                )
            }),
            Sort::Bytes => {
                rows.sort_by_key(|row| (std::cmp::Reverse(row.bytes), std::cmp::Reverse(row.seq)))
            }
            Sort::State => rows.sort_by_key(|row| (row.conn_state, std::cmp::Reverse(row.seq))),
        }
    }
}

/// Which teardowns the list shows, by how the connection closed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Filter {
    /// Every connection that completed its handshake; one-sided debris is
    /// summed up in a line, its newest few below (see the view).
    #[default]
    All,
    /// Both FINs (one after the other, or crossed).
    Graceful,
    /// One FIN, never answered.
    HalfClosed,
    /// A RST ended an established connection.
    Reset,
    /// A RST answered the SYN (REJ).
    Rejected,
    /// The SYN was never answered (S0, half-open timeouts).
    HalfOpen,
    /// Every one-sided record: S0, REJ, SH, OTH...
    Debris,
}

impl Filter {
    pub const ALL: [Filter; 7] = [
        Filter::All,
        Filter::Graceful,
        Filter::HalfClosed,
        Filter::Reset,
        Filter::Rejected,
        Filter::HalfOpen,
        Filter::Debris,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Filter::All => "all",
            Filter::Graceful => "graceful",
            Filter::HalfClosed => "half-closed",
            Filter::Reset => "reset",
            Filter::Rejected => "rejected",
            Filter::HalfOpen => "half-open/S0",
            Filter::Debris => "debris",
        }
    }

    fn next(self) -> Filter {
        let at = Filter::ALL.iter().position(|f| *f == self).unwrap_or(0);
        Filter::ALL[(at + 1) % Filter::ALL.len()]
    }

    /// Whether the list shows `row` under this filter.
    pub fn shows(self, row: &Teardown) -> bool {
        match self {
            Filter::All => row.established,
            Filter::Graceful => matches!(row.close, CloseKind::Graceful | CloseKind::Simultaneous),
            Filter::HalfClosed => row.close == CloseKind::HalfClosed,
            Filter::Reset => row.close == CloseKind::Abort,
            Filter::Rejected => row.close == CloseKind::Refused || row.conn_state == "REJ",
            Filter::HalfOpen => row.close == CloseKind::HalfOpen || row.conn_state == "S0",
            Filter::Debris => !row.established,
        }
    }
}

/// What the view shows beside the figures: the user's choices.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ViewState {
    pub paused: bool,
    pub help: bool,
    pub sort: Sort,
    pub filter: Filter,
}

/// What a key asks of the run loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyOutcome {
    /// End the run, as SIGINT does.
    Quit,
    /// The view changed: draw it now.
    Redraw,
    /// Not a key of the dashboard's.
    Ignored,
}

impl ViewState {
    /// Applies one key press. Releases and repeats of a held key (which
    /// some terminals report) do nothing: a toggle must not flip twice.
    pub fn key(&mut self, key: KeyEvent) -> KeyOutcome {
        if key.kind != KeyEventKind::Press {
            return KeyOutcome::Ignored;
        }
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        match key.code {
            KeyCode::Char('c' | 'C') if ctrl => KeyOutcome::Quit,
            KeyCode::Char('q' | 'Q') | KeyCode::Esc if !ctrl => KeyOutcome::Quit,
            _ if ctrl => KeyOutcome::Ignored,
            KeyCode::Char('?') => {
                self.help = !self.help;
                KeyOutcome::Redraw
            }
            KeyCode::Char('p' | 'P' | ' ') => {
                self.paused = !self.paused;
                KeyOutcome::Redraw
            }
            KeyCode::Char('s' | 'S') => {
                self.sort = self.sort.next();
                KeyOutcome::Redraw
            }
            KeyCode::Char('f' | 'F') => {
                self.filter = self.filter.next();
                KeyOutcome::Redraw
            }
            _ => KeyOutcome::Ignored,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn press(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }

    #[test]
    fn quitting_keys_end_the_run_and_change_nothing() {
        let mut state = ViewState::default();
        for key in [
            press(KeyCode::Char('q')),
            press(KeyCode::Char('Q')),
            press(KeyCode::Esc),
            KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL),
        ] {
            assert_eq!(state.key(key), KeyOutcome::Quit, "{key:?}");
        }
        assert_eq!(state, ViewState::default());
    }

    #[test]
    fn pause_and_help_toggle() {
        let mut state = ViewState::default();
        assert_eq!(state.key(press(KeyCode::Char('p'))), KeyOutcome::Redraw);
        assert!(state.paused);
        assert_eq!(state.key(press(KeyCode::Char(' '))), KeyOutcome::Redraw);
        assert!(!state.paused);
        state.key(press(KeyCode::Char('?')));
        assert!(state.help && !state.paused);
        state.key(press(KeyCode::Char('?')));
        assert!(!state.help);
        // A release (kitty's keyboard protocol reports them) flips nothing.
        let mut release = press(KeyCode::Char('p'));
        release.kind = KeyEventKind::Release;
        assert_eq!(state.key(release), KeyOutcome::Ignored);
        assert!(!state.paused);
        // Ctrl with another letter is not that letter: ^S (flow control,
        // should it get through) does not sort.
        let ctrl_s = KeyEvent::new(KeyCode::Char('s'), KeyModifiers::CONTROL);
        assert_eq!(state.key(ctrl_s), KeyOutcome::Ignored);
        assert_eq!(state.sort, Sort::Newest);
        assert_eq!(state.key(press(KeyCode::Char('x'))), KeyOutcome::Ignored);
    }

    #[test]
    fn sort_and_filter_cycle_through_every_choice_and_back() {
        let mut state = ViewState::default();
        let mut sorts = vec![state.sort];
        for _ in 0..Sort::ALL.len() {
            state.key(press(KeyCode::Char('s')));
            sorts.push(state.sort);
        }
        assert_eq!(sorts[..Sort::ALL.len()], Sort::ALL);
        assert_eq!(state.sort, Sort::Newest);
        let mut filters = vec![state.filter];
        for _ in 0..Filter::ALL.len() {
            state.key(press(KeyCode::Char('f')));
            filters.push(state.filter);
        }
        assert_eq!(filters[..Filter::ALL.len()], Filter::ALL);
        assert_eq!(state.filter, Filter::All);
        // One does not disturb the other, nor the pause.
        state.key(press(KeyCode::Char('p')));
        state.key(press(KeyCode::Char('s')));
        state.key(press(KeyCode::Char('f')));
        assert_eq!(
            state,
            ViewState {
                paused: true,
                help: false,
                sort: Sort::Duration,
                filter: Filter::Graceful
            }
        );
    }
}
