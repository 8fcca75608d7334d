from keycourier.cli.entry import run

run()
