from keycourier.cli.main import main

main()
