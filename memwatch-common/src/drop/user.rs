#[cfg(test)]
mod tests {
    use super::super::Drop;

    #[test]
    fn every_reason_has_its_index_and_a_distinct_name() {
        for (i, d) in Drop::ALL.iter().enumerate() {
            assert_eq!(*d as usize, i);
            assert!(Drop::ALL[..i].iter().all(|o| o.name() != d.name()));
        }
    }
}
