from serve.server import main

main()
