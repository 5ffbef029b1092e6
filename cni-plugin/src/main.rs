//! `weft`: the CNI plugin binary. All the work is in the `weft_cni` library.
#![forbid(unsafe_code)]

fn main() {
    weft_cni_types::skel::run(weft_cni::handle)
}
