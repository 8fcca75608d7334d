"""The thin click layer: parse options, call one library function, render."""
