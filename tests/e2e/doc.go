// Package e2e holds cryo's end-to-end tests: they build the cryo command and
// the programs in bench/workloads, run those programs, checkpoint them into a
// fresh page store, kill them, restore them with `cryo restore`, and check
// that the programs themselves report their state intact.
//
// Each test answers one acceptance item of issue 2 (see the test's doc
// comment). The tests need root and a kernel with userfaultfd; without them
// they skip with the reason, or fail when CRYO_E2E_REQUIRE=1 (as `make test`
// and .ci/run set it), so a CI machine that cannot run them does not pass
// silently. CRYO_BIN names a prebuilt cryo binary to test instead of building
// ./cmd/cryo.
//
// What the tests assume of the CLI beyond its usage text:
//   - `cryo checkpoint PID` prints only the snapshot id on stdout;
//   - `cryo ls` prints one snapshot per line, its id first (after an optional
//     header line in capitals);
//   - `cryo restore` writes nothing of its own to stdout (its stdout carries
//     the restored process's stdout when that was a terminal or pipe);
//   - `cryo inspect --json` holds the object described at snapshotStats.
package e2e
