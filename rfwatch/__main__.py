from rfwatch.cli import console

console()
