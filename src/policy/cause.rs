//! Hangup cause policy: what Zammad's `cause` is, from what Asterisk said
//! (DialStatus, Q.850 cause) and what the call went through (reference/asterisk.md §4.4).
