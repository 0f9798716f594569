//! The fragment table shared between pods: one pod's first fragments, as
//! many as it likes, must not cost another pod its fragmented datagrams.
//! When the table is full, the source that holds the most entries gives up
//! its oldest; a newcomer is never refused.

mod kit;

use kit::{A, A4, B, B4, Rig, fragment4};
use vswitch_datapath::counters::Outcome;
use vswitch_datapath::{Action, Config};

/// A fragment table of 64 entries.
const MAX: usize = 64;

fn rig() -> Rig {
    Rig::two_pods_with(Config {
        frag_max: MAX,
        ..Config::default()
    })
}

/// A UDP header (ports 5 -> 53, length 24) and 8 bytes: a first fragment.
const FIRST: [u8; 16] = [0, 5, 0, 53, 0, 24, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8];

/// Pod a (port 1) sends the first fragment of datagram `id` to pod b.
fn a_first(s: &mut Rig, id: u16) -> Action {
    s.send(1, &mut fragment4(A, A4, B4, id, 0, true, &FIRST))
}

fn a_last(s: &mut Rig, id: u16) -> Action {
    s.send(1, &mut fragment4(A, A4, B4, id, 2, false, &[9; 8]))
}

#[test]
fn a_pod_filling_the_fragment_table_does_not_cut_another_pods_datagrams() {
    let mut s = rig();
    let mut id = 0u16;
    // a floods first fragments: the table is full of a's datagrams
    for _ in 0..4 * MAX {
        assert_eq!(a_first(&mut s, id), Action::Forward(2));
        id += 1;
    }
    // b's datagrams, each cut in two with a's flood going on in between
    let mut whole = 0;
    for bid in 0..20u16 {
        assert_eq!(
            s.send(2, &mut fragment4(B, B4, A4, bid, 0, true, &FIRST)),
            Action::Forward(1)
        );
        for _ in 0..MAX {
            a_first(&mut s, id);
            id += 1;
        }
        if s.send(2, &mut fragment4(B, B4, A4, bid, 2, false, &[9; 8])) == Action::Forward(1) {
            whole += 1;
        }
    }
    assert_eq!(
        whole, 20,
        "b's datagrams that got all their fragments through"
    );
}

#[test]
fn a_full_table_takes_a_pods_newest_datagram_in_place_of_its_oldest() {
    let mut s = rig();
    for id in 0..MAX as u16 {
        a_first(&mut s, id);
    }
    // full: a's next datagram is remembered, its oldest forgotten
    let newest = MAX as u16;
    assert_eq!(a_first(&mut s, newest), Action::Forward(2));
    assert_eq!(a_last(&mut s, newest), Action::Forward(2));
    assert_eq!(a_last(&mut s, 0), Action::Drop(Outcome::FragmentUnknown));
    assert_eq!(a_last(&mut s, 1), Action::Forward(2), "only one went");
}

#[test]
fn two_pods_flooding_fragments_share_the_table_evenly() {
    let mut s = rig();
    let rounds = 4 * MAX as u16;
    for id in 0..rounds {
        a_first(&mut s, id);
        s.send(2, &mut fragment4(B, B4, A4, id, 0, true, &FIRST));
    }
    // each keeps its newest half-table's worth
    let half = (MAX / 2) as u16;
    for id in rounds - half..rounds {
        assert_eq!(a_last(&mut s, id), Action::Forward(2), "a's datagram {id}");
        assert_eq!(
            s.send(2, &mut fragment4(B, B4, A4, id, 2, false, &[9; 8])),
            Action::Forward(1),
            "b's datagram {id}"
        );
    }
    // and nothing older
    assert_eq!(
        a_last(&mut s, rounds - half - 1),
        Action::Drop(Outcome::FragmentUnknown)
    );
}
