// Command bench measures cryo against a naive full copy on this machine.
package main

func main() {}
