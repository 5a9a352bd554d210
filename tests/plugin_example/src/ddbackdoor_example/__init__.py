"""An example ddbackdoor plugin: the attack `corner_patch` and the defense `fine_tune`."""
