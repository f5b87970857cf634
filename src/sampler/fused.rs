//! The fused element-wise pass with its finiteness probe, shared by every update kernel.

/// One fused pass `zip.fold(.., |bad, args| ..)` (in a function generic over `F: Float`) whose
/// body returns a probe value per element
/// (finite iff everything it computed is finite); evaluates to whether all were finite.
/// The probes are OR-ed as `(v - v).to_bits()`, which vectorises (a boolean AND does not, and
/// costs as much as the update itself). Split into parallel blocks with the `rayon` feature on
/// large arrays (bit-identical: the pass is element-wise and the reduction is an OR).
macro_rules! fold_finite {
    // `clamp = c;`: the body calls `c.apply(raw)`; compiled twice, once with the identity clamp
    // (the common case, which then costs nothing) and once with `c`.
    (clamp = $c:ident; seq; $zip:expr, |$($arg:pat_param),* $(,)?| $body:block) => {
        if $c.is_none() {
            let $c = $crate::sampler::core::x0::NoClamp;
            fold_finite!(seq; $zip, |$($arg),*| $body)
        } else {
            fold_finite!(seq; $zip, |$($arg),*| $body)
        }
    };
    (clamp = $c:ident; par; $zip:expr, |$($arg:pat_param),* $(,)?| $body:block) => {
        fold_finite!(clamp = $c; $zip, |$($arg),*| $body)
    };
    (clamp = $c:ident; $zip:expr, |$($arg:pat_param),* $(,)?| $body:block) => {
        if $c.is_none() {
            let $c = $crate::sampler::core::x0::NoClamp;
            fold_finite!($zip, |$($arg),*| $body)
        } else {
            fold_finite!($zip, |$($arg),*| $body)
        }
    };
    // Six-array zips have no parallel fold in ndarray: always sequential.
    (seq; $zip:expr, |$($arg:pat_param),* $(,)?| $body:block) => {
        $zip.fold(<F as $crate::Float>::Bits::default(), |bad, $($arg),*| bad | $crate::Float::nonfinite_bits($body))
            == <F as $crate::Float>::Bits::default()
    };
    (par; $zip:expr, |$($arg:pat_param),* $(,)?| $body:block) => {
        fold_finite!($zip, |$($arg),*| $body)
    };
    ($zip:expr, |$($arg:pat_param),* $(,)?| $body:block) => {{
        let zip = $zip;
        #[cfg(feature = "rayon")]
        {
            if zip.size() >= $crate::par::PAR_MIN {
                zip.par_fold(
                    <F as $crate::Float>::Bits::default,
                    |bad, $($arg),*| bad | $crate::Float::nonfinite_bits($body),
                    |a, b| a | b,
                ) == <F as $crate::Float>::Bits::default()
            } else {
                fold_finite!(seq; zip, |$($arg),*| $body)
            }
        }
        #[cfg(not(feature = "rayon"))]
        {
            fold_finite!(seq; zip, |$($arg),*| $body)
        }
    }};
}
