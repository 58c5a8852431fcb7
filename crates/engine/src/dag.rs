//! Graph helpers over task indices: cycle finding and dependents.

/// `edges[i]` lists the tasks `i` runs after. Returns a cycle as a closed
/// walk (`[a, b, a]`, in `after` order) if there is one.
pub fn find_cycle(edges: &[Vec<usize>]) -> Option<Vec<usize>> {
    // Iterative depth-first search with three colours: white (0) unvisited,
    // grey (1) on the current path, black (2) done.
    let n = edges.len();
    let mut colour = vec![0u8; n];
    let mut stack: Vec<(usize, usize)> = Vec::new();
    for start in 0..n {
        if colour[start] != 0 {
            continue;
        }
        stack.push((start, 0));
        colour[start] = 1;
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            if let Some(&to) = edges[node].get(*next) {
                *next += 1;
                match colour[to] {
                    0 => {
                        colour[to] = 1;
                        stack.push((to, 0));
                    }
                    1 => {
                        let from = stack.iter().position(|&(v, _)| v == to).unwrap_or(0);
                        let mut cycle: Vec<usize> = stack[from..].iter().map(|&(v, _)| v).collect();
                        cycle.push(to);
                        return Some(cycle);
                    }
                    _ => {}
                }
            } else {
                colour[node] = 2;
                stack.pop();
            }
        }
    }
    None
}

/// The reverse of `edges`: for each task, the tasks that run after it.
pub fn dependents(edges: &[Vec<usize>]) -> Vec<Vec<usize>> {
    let mut out = vec![Vec::new(); edges.len()];
    for (i, deps) in edges.iter().enumerate() {
        for &d in deps {
            out[d].push(i);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cycles() {
        assert_eq!(find_cycle(&[vec![], vec![0], vec![0, 1]]), None);
        assert_eq!(find_cycle(&[vec![1], vec![0]]), Some(vec![0, 1, 0]));
        assert_eq!(find_cycle(&[vec![0]]), Some(vec![0, 0]));
        let c = find_cycle(&[vec![], vec![0, 3], vec![1], vec![2]]).unwrap();
        assert_eq!(c.first(), c.last());
        assert_eq!(c.len(), 4);
    }

    #[test]
    fn deep_chains_do_not_overflow() {
        let n = 200_000;
        let edges: Vec<Vec<usize>> = (0..n)
            .map(|i| if i == 0 { vec![] } else { vec![i - 1] })
            .collect();
        assert_eq!(find_cycle(&edges), None);
        assert_eq!(dependents(&edges)[0], vec![1]);
    }
}
