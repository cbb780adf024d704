//! The serial-console contract between Bulwark and whoever reads the console (people, `xtask`).
//!
//! * Bulwark's own log lines:  `bulwark: <LEVEL> <message>`
//! * Violation lines (spec §5): `bulwark: violation kind=... access=... gpa=0x... gva=0x... ip=0x... vcpu=N action=...`
//! * Guest console output, one whole line at a time: `guest| <text>`
//! * The last line of every run: `bulwark: result status=<u32> reason=<word>`
//!   status 0 = success; the run's exit code is `status` (xtask maps it to its own exit code).
//! * Every Bulwark line after the first (`bulwark: log-key ...`) ends with ` seq=N mac=HEX`
//!   ([`crate::logauth`]); parsers here ignore fields they do not know, so they read tagged and
//!   untagged lines alike. Whether a line is genuine is [`crate::logauth::Verifier`]'s call.

/// Prefix of every Bulwark line.
pub const BULWARK_PREFIX: &str = "bulwark: ";
/// Prefix of guest console lines as Bulwark relays them.
pub const GUEST_PREFIX: &str = "guest| ";
/// Prefix of the final verdict line: `bulwark: result status=N reason=WORD`.
pub const RESULT_PREFIX: &str = "bulwark: result status=";
/// Prefix of a violation line.
pub const VIOLATION_PREFIX: &str = "bulwark: violation ";
/// Prefix of the global rate limiter's summary: `bulwark: violations suppressed=N total=T`
/// (N violations that no violation line reported; T violations so far).
pub const VIOLATIONS_SUMMARY_PREFIX: &str = "bulwark: violations ";

/// Parse a result line (tagged or not): returns `(status, reason)`. It says nothing about whether
/// Bulwark wrote the line: check that with [`crate::logauth::Verifier`] first.
pub fn parse_result_line(line: &str) -> Option<(u32, &str)> {
    let rest = line.trim_end().strip_prefix(RESULT_PREFIX)?;
    let mut words = rest.split(' ');
    let status = words.next()?.parse().ok()?;
    let reason = words.find_map(|w| w.strip_prefix("reason=")).unwrap_or("");
    Some((status, reason))
}

/// Prefix of the note Bulwark writes after its console buffer overflowed:
/// `bulwark: WARN console dropped=N (...)`: N violation lines not written (their `seq` numbers
/// are the gap right before the note). The note is itself a tagged Bulwark line.
pub const DROPPED_PREFIX: &str = "bulwark: WARN console dropped=";

/// Parse a dropped note (tagged or not): the number of Bulwark lines it reports dropped. It says
/// nothing about whether Bulwark wrote the line: check that with [`crate::logauth::Verifier`].
pub fn parse_dropped_note(line: &str) -> Option<u64> {
    let rest = line.trim_end().strip_prefix(DROPPED_PREFIX)?;
    let digits = rest.split(' ').next()?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Well-known `reason=` words.
pub mod reason {
    /// The guest reported its status itself.
    pub const GUEST_EXIT: &str = "guest-exit";
    /// No guest was given: Bulwark booted, printed its banner and stopped.
    pub const NO_GUEST: &str = "no-guest";
    /// Bulwark panicked.
    pub const PANIC: &str = "panic";
    /// Bulwark refused to start (bad command line, missing hardware feature, bad image).
    pub const REFUSED: &str = "refused";
    /// The guest triple-faulted / hit an unrecoverable exception loop.
    pub const GUEST_CRASH: &str = "guest-crash";
    /// An exit Bulwark does not handle.
    pub const UNHANDLED_EXIT: &str = "unhandled-exit";
    /// A protection violation under the `halt` policy.
    pub const VIOLATION_HALT: &str = "violation-halt";
    /// A VMX instruction (VMREAD, VMWRITE, VMLAUNCH/VMRESUME, INVEPT, INVVPID, ...) failed while
    /// a guest was running: the line before names it (`vmx error op=... field=... err=...`).
    /// The run stops there: the VMCS or the TLBs are in a state Bulwark no longer knows.
    pub const VMX_ERROR: &str = "vmx-error";
}

/// Status Bulwark reports when it, rather than the guest, ends the run with a failure.
pub const STATUS_BULWARK_FAILURE: u32 = 0xB0;
