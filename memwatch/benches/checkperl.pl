# Workload for `memwatch check` against valgrind's memcheck: a real,
# allocation-heavy program (perl, which Debian builds on glibc's malloc)
# building, reading and thinning a hash of 200,000 entries.
my %h;
for my $i (1 .. 200000) {
    $h{"key$i"} = [$i, "v" x ($i % 50)];
}
my $n = 0;
for my $k (keys %h) {
    $n += length($h{$k}[1]);
    delete $h{$k} if $n % 3 == 0;
}
print "$n\n";
